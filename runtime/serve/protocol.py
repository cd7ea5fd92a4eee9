"""OpenAI's wire format: request checks and response objects (no web framework here).

Every bad request is an :class:`ApiError` whose ``param`` names the field, answered as
OpenAI's error object ``{"error": {"message", "type", "param", "code"}}``. No request field
is ever used as a path.
"""

from __future__ import annotations

import json
import math
import numbers
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ..generate import MAX_SEED, MAX_TEMPERATURE, MIN_TEMPERATURE, SamplingParams

MAX_STOP = 4  # stop strings per request, as OpenAI allows
MAX_CLASSIFY_INPUTS = 256  # /v1/classify inputs per request (the server's default cap)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


def parse_json(raw: bytes) -> dict:
    """The request body as a dict, or a 400 ``invalid_json`` naming what is wrong (not UTF-8,
    not JSON, nested too deep, a number too long to read, not an object). ``NaN`` and
    ``Infinity`` are read, so the field that holds one is named by its own check."""
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise bad("the request body is not UTF-8 text", None, "invalid_json") from None
    except json.JSONDecodeError as e:
        raise bad(f"the request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
                  None, "invalid_json") from None
    except RecursionError:
        raise bad("the request body is not valid JSON (arrays or objects nested too deep)",
                  None, "invalid_json") from None
    except ValueError:  # an integer over Python's digit limit (the only other ValueError json raises)
        raise bad(f"the request body holds a number over {sys.get_int_max_str_digits()} digits, too long "
                  "to read", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {_type_name(body)}", None, "invalid_json")
    return body


def _type_name(v: object) -> str:
    return "null" if v is None else {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(v), "number" if isinstance(v, numbers.Number) else type(v).__name__)


def _shown(v: object) -> str:
    """A request value in a message, short: a number as the client wrote it (an integer of
    more than 20 digits by its length; NaN and Infinity by name), anything else by its type."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return _type_name(v)
    if isinstance(v, float):
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(repr(v), repr(v))
    if abs(v) >= 10**20:
        return f"an integer of {len(str(abs(v)))} digits"
    return str(v)


def _int(body: dict, name: str, default, lo: int, hi: int | None = None):
    v = body.get(name)
    if v is None:
        return default
    shown = _shown(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        got = shown if isinstance(v, float) else _type_name(v)  # 1.5 or NaN as written, else the type
        raise bad(f"{name} must be an integer, got {got}", name, "invalid_type")
    if v < lo or (hi is not None and v > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise bad(f"{name} must be in {allowed}, got {shown}", name, "invalid_value")
    return v


def _number(body: dict, name: str, default: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise bad(f"{name} must be a number, got {_type_name(v)}", name, "invalid_type")
    try:
        f = float(v)
    except OverflowError:  # an integer too big for a float
        f = math.inf
    if not math.isfinite(f):
        raise bad(f"{name} must be a finite number, got {_shown(v)}", name, "invalid_value")
    return f


def _bool(body: dict, name: str, default: bool = False, where: str = "") -> bool:
    """``body[name]`` as a bool; ``where``: the object it sits in (``stream_options.``)."""
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"{where}{name} must be true or false, got {_type_name(v)}", where + name, "invalid_type")
    return v


def model_name(body: dict, tasks: Sequence[str]) -> str:
    v = body.get("model")
    if not isinstance(v, str):
        raise bad(f"model must be a string naming a task ({', '.join(tasks)}), got {_type_name(v)}",
                  "model", "invalid_type" if v is not None else "missing_field")
    if v not in tasks:
        raise bad(f"model {v[:80]!r} is not a task of this bundle; models: {', '.join(tasks)}",
                  "model", "model_not_found")
    return v


@dataclass(frozen=True)
class GenerationRequest:
    task: str
    text: str
    params: SamplingParams
    stream: bool
    include_usage: bool
    truncate: bool
    input_field: str  # "prompt" or "messages": where an input problem is reported


def _prompt(body: dict) -> str:
    v = body.get("prompt")
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    elif isinstance(v, list):
        raise bad(f"prompt must be one string (this server answers one prompt per request), got "
                  f"an array of {len(v)}", "prompt", "invalid_value")
    if not isinstance(v, str):
        raise bad(f"prompt must be a string, got {_type_name(v)}", "prompt",
                  "missing_field" if v is None else "invalid_type")
    return v


def _last_user_message(body: dict) -> str:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad(f"messages must be a non-empty array of {{role, content}} objects, got {_type_name(msgs)}",
                  "messages", "missing_field" if msgs is None else "invalid_type")
    for i in range(len(msgs) - 1, -1, -1):
        m = msgs[i]
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object, got {_type_name(m)}", f"messages[{i}]", "invalid_type")
        if m.get("role") != "user":
            continue
        c = m.get("content")
        if isinstance(c, list):  # content parts: the text ones, joined
            parts = []
            for k, p in enumerate(c):
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise bad(f"messages[{i}].content[{k}] must be a text part {{type: 'text', text}}",
                              f"messages[{i}].content[{k}]", "invalid_type")
                parts.append(p["text"])
            c = "".join(parts)
        if not isinstance(c, str):
            raise bad(f"messages[{i}].content must be a string, got {_type_name(c)}",
                      f"messages[{i}].content", "invalid_type")
        return c
    raise bad("messages has no message with role 'user' (its content is the task's input)",
              "messages", "invalid_value")


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or len(v) > MAX_STOP or any(not isinstance(s, str) or not s for s in v):
        raise bad(f"stop must be a non-empty string or an array of at most {MAX_STOP} of them",
                  "stop", "invalid_type")
    return tuple(v)


def generation_request(body: dict, chat: bool, tasks: Sequence[str], max_tokens: int,
                       default_max_tokens: int) -> GenerationRequest:
    """The checked fields of a completions (``chat`` False) or chat completions request.
    ``temperature`` defaults to 0 (greedy, as the runtime does)."""
    task = model_name(body, tasks)
    text = _last_user_message(body) if chat else _prompt(body)
    n = _int(body, "n", 1, 1)
    if n != 1:
        raise bad(f"n must be 1 (one choice per request), got {n}", "n", "invalid_value")
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    budget = default_max_tokens
    for name in names:
        if body.get(name) is not None:
            budget = _int(body, name, default_max_tokens, 1, max_tokens)
            break
    temperature = _number(body, "temperature", 0.0)
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise bad(f"temperature must be 0 (greedy) or in {MIN_TEMPERATURE:g}..{MAX_TEMPERATURE:g}, got {temperature}",
                  "temperature", "invalid_value")
    top_p = _number(body, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise bad(f"top_p must be in (0, 1], got {top_p}", "top_p", "invalid_value")
    top_k = _int(body, "top_k", 0, 0)
    seed = _int(body, "seed", None, 0, MAX_SEED)
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise bad(f"stream_options must be an object, got {_type_name(opts)}", "stream_options", "invalid_type")
    include_usage = _bool(opts or {}, "include_usage", where="stream_options.")
    params = SamplingParams(budget, temperature, top_k, top_p, seed, _stop(body),
                            ignore_eos=_bool(body, "ignore_eos"))
    return GenerationRequest(task, text, params, stream, include_usage, _bool(body, "truncate"),
                             "messages" if chat else "prompt")


def classify_request(body: dict, tasks: Sequence[str],
                     max_inputs: int = MAX_CLASSIFY_INPUTS) -> tuple[str, list[str], bool, bool]:
    """(task, texts, one text?, truncate) of a /v1/classify request: ``input`` is one string or
    an array of 1 to ``max_inputs`` of them."""
    task = model_name(body, tasks)
    v = body.get("input")
    single = isinstance(v, str)
    texts = [v] if single else v
    if not isinstance(texts, list) or not texts or any(not isinstance(t, str) for t in texts):
        raise bad(f"input must be a string or a non-empty array of strings, got {_type_name(v)}", "input",
                  "missing_field" if v is None else "invalid_type")
    if len(texts) > max_inputs:
        raise bad(f"input has {len(texts)} strings, over this server's limit of {max_inputs} per request; "
                  "split them into several requests", "input", "too_many_inputs")
    return task, texts, single, _bool(body, "truncate")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def finish_reason(reason: str) -> str:
    """OpenAI's name: an eos or a stop string is "stop", max_tokens is "length"."""
    return "length" if reason == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(rid: str, task: str, text: str, reason: str, prompt_tokens: int, completion_tokens: int,
               chat: bool, created: int | None = None) -> dict:
    created = int(time.time()) if created is None else created
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": None, "finish_reason": finish_reason(reason)}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(reason)}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": task, "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}


def chunk(rid: str, task: str, created: int, chat: bool, text: str | None = None,
          reason: str | None = None, role: bool = False, usage_: dict | None = None) -> dict:
    """One streamed chunk: a text piece, the finish (``reason``), the chat role's opening
    chunk (``role``), or the closing usage chunk (``usage_``, no choices)."""
    out = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
           "created": created, "model": task}
    if usage_ is not None:
        out["choices"], out["usage"] = [], usage_
        return out
    fr = finish_reason(reason) if reason else None
    if chat:
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        out["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fr}]
    else:
        out["choices"] = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": fr}]
    return out
