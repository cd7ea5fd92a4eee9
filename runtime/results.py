r"""What the runtime's API returns: a :class:`Generation`, a :class:`Classification`, streamed
:class:`TokenEvent`\ s; the events of one decoded token, a stream gathered into rows; and the
checks of the API's arguments (texts, inputs, ``batch_size``)."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass

from alter_edge.errors import ConfigError
from alter_edge.io import text_problem

from .generate import RowText, shown_value


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop" (a stop string) or "length" (max_new_tokens)
    task: str
    truncated: bool = False  # the prompt was cut in the middle to max_prompt_tokens


@dataclass(frozen=True)
class Classification:
    label: str
    probability: float  # softmax over the labels' log-likelihoods
    scores: dict[str, float]  # label -> log-likelihood of its tokens (with eos)
    task: str
    truncated: bool = False  # the prompt was cut in the middle to max_prompt_tokens


@dataclass(frozen=True)
class TokenEvent:
    """One streamed step of one row: ``text`` is the new text to show (may be empty);
    the row's last event has ``finish_reason`` set (and ``token_id`` None unless a stop
    string ended the row on that token)."""

    row: int
    token_id: int | None
    text: str
    finish_reason: str | None = None


def row_events(row: int, text: RowText, token_id: int | None, max_new_tokens: int) -> list[TokenEvent]:
    """The events of one decoded token of a row (``None``: its eos): its text piece, and its
    finish when a stop string, the eos or ``max_new_tokens`` ends it (``stream_ids`` and the
    server both build their events here)."""
    if token_id is None:
        return [TokenEvent(row, None, text.finish(), "eos")]
    piece = text.push(token_id)
    if text.stopped:
        return [TokenEvent(row, token_id, piece, "stop")]
    if len(text.ids) == max_new_tokens:  # decode gives the row no more tokens
        return [TokenEvent(row, token_id, piece), TokenEvent(row, None, text.finish(), "length")]
    return [TokenEvent(row, token_id, piece)]


def finished_rows(events: Iterator[TokenEvent], n: int, task_names: Sequence[str],
                  truncated: Sequence[bool] | None = None) -> Iterator[tuple[int, Generation]]:
    """``(row, its Generation)`` as each row of a stream finishes."""
    ids: list[list[int]] = [[] for _ in range(n)]
    text = [""] * n
    cut = truncated or [False] * n
    for ev in events:
        if ev.token_id is not None:
            ids[ev.row].append(ev.token_id)
        text[ev.row] += ev.text
        if ev.finish_reason:
            yield ev.row, Generation(text[ev.row], ids[ev.row], ev.finish_reason, task_names[ev.row], cut[ev.row])


def collect(events: Iterator[TokenEvent], n: int, task_names: Sequence[str],
            truncated: Sequence[bool] | None = None) -> list[Generation]:
    """Gather a stream into one :class:`Generation` per row."""
    out: list[Generation | None] = [None] * n
    for i, g in finished_rows(events, n, task_names, truncated):
        out[i] = g
    missing = [i for i, g in enumerate(out) if g is None]
    if missing:
        raise RuntimeError(f"the stream ended without finishing rows {missing[:5]}")
    return out


def as_texts(texts: object) -> tuple[bool, list[str]]:
    """(one text?, the texts as a list): a str is one text; bytes or a non-string item is a
    ConfigError (bytes are not split into numbers)."""
    if isinstance(texts, str):
        return True, [texts]
    if isinstance(texts, (bytes, bytearray, memoryview)):
        raise ConfigError(f"texts must be a str or a list of str, got {type(texts).__name__} "
                          "(decode it first, e.g. .decode('utf-8'))")
    if isinstance(texts, (Mapping, Set)):  # a dict would run its keys; a set has no order
        raise ConfigError(f"texts must be a str or a list of str, got {type(texts).__name__} "
                          "(pass list(...) of the texts, in the order the results should come)")
    try:
        out = list(texts)
    except TypeError:
        raise ConfigError(f"texts must be a str or a list of str, got {type(texts).__name__}") from None
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ConfigError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return False, out


def input_problem(text: object) -> str | None:
    """Why ``text`` cannot be a model input (not a string, empty, a lone surrogate), or None."""
    return text_problem(text, hint=False)


def check_batch_size(batch_size: object) -> None:
    if batch_size is not None and (not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool)
                                   or batch_size < 1):
        raise ConfigError(f"batch_size must be an integer >= 1 or None (all rows at once), got {shown_value(batch_size)}")
