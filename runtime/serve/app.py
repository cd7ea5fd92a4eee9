"""The HTTP side of ``alter-edge serve``: a Starlette app on uvicorn, speaking OpenAI's wire
format, in front of one :class:`~alter_edge.runtime.serve.scheduler.Scheduler`.

Handlers run on the event loop: they check a request, encode its prompt, queue a job, and
relay the scheduler's events (SSE for ``stream``). The scheduler thread hands each step's
events to the loop in one ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from alter_edge.errors import AlterEdgeError, DataError

from ..model import EdgeModel
from .metrics import Metrics
from .protocol import (
    MAX_CLASSIFY_INPUTS,
    ApiError,
    chunk,
    classify_request,
    completion,
    error_body,
    generation_request,
    new_id,
    parse_json,
    usage,
)
from .scheduler import DEADLINE, PREFILL_TOKENS, SHUTDOWN, Job, Overloaded, Scheduler

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ServeOptions:
    max_batch: int = 8
    max_queue: int = 64
    max_tokens: int | None = None  # the largest max_tokens a request may ask (default: the bundle's)
    timeout: float = 120.0  # each request's deadline, seconds from its arrival
    max_body_bytes: int = 1 << 20
    max_classify_inputs: int = MAX_CLASSIFY_INPUTS  # /v1/classify inputs per request; more get 400
    api_key: str | None = None  # None: no key needed (loopback, or --insecure)
    prefill_tokens: int | None = PREFILL_TOKENS  # prompt tokens between two decode steps (None: whole prompts)


class _Sink:
    """Where a job's events land on the event loop."""

    __slots__ = ("endpoint", "queue")

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.queue: asyncio.Queue = asyncio.Queue()


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class Server:
    def __init__(self, model: EdgeModel, options: ServeOptions):
        self.model, self.options = model, options
        self.metrics = Metrics()
        self.scheduler = Scheduler(model, options.max_batch, options.max_queue, options.max_tokens, self.metrics,
                                   options.prefill_tokens)
        self.tasks = list(model.tasks.names)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.key = options.api_key.encode("utf-8") if options.api_key else None
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/classify", self.classify, methods=["POST"]),
            ],
            exception_handlers={HTTPException: self._http_error, Exception: self._internal_error},
            lifespan=self._lifespan,
        )

    # -- lifecycle -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.loop = asyncio.get_running_loop()
        self.scheduler.start()
        try:
            yield
        finally:
            self.scheduler.stop()

    def _deliver(self, job: Job, events: list) -> None:  # the scheduler thread
        self.loop.call_soon_threadsafe(job.sink.queue.put_nowait, events)

    # -- helpers ---------------------------------------------------------------------------
    async def _http_error(self, request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(msg, kind), status_code=exc.status_code)

    async def _internal_error(self, request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    def _authorize(self, request: Request) -> None:
        if self.key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), self.key)
        if not ok:
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", None,
                           "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _body(self, request: Request) -> dict:
        self._authorize(request)
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body is {int(declared)} bytes, over the limit of {limit}",
                           None, "body_too_large")
        parts, size = [], 0
        try:
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise ApiError(413, f"the request body is over the limit of {limit} bytes", None,
                                   "body_too_large")
                parts.append(part)
        except ClientDisconnect:  # nobody is left to answer: one line, no traceback
            log.info("%s %s: the client went away after %d bytes of its request body", request.method,
                     request.url.path, size)
            raise ApiError(499, "the client closed the connection", None, "client_closed") from None
        return parse_json(b"".join(parts))

    def _prompt(self, text: str, task: str, truncate: bool, field: str) -> list[int]:
        try:
            ids, _ = self.model.prompt_ids(text, task, truncate)
        except DataError as e:
            code = "context_length_exceeded" if "max_prompt_tokens" in str(e) else "invalid_value"
            raise ApiError(400, f"{field}: {e}", field, code) from None
        return ids

    def _submit(self, job: Job) -> None:
        try:
            self.scheduler.submit(job)
        except Overloaded as e:
            if e.closed:
                raise self._ended(SHUTDOWN) from None
            self.metrics.rejected.inc()
            raise ApiError(429, f"{e}; retry later", None, "rate_limit_exceeded", type="rate_limit_error",
                           headers={"Retry-After": str(self.scheduler.retry_after())}) from None

    def _job(self, endpoint: str, task: str, arrived: float, **kw) -> Job:
        """A job whose deadline is ``timeout`` seconds after the request arrived (reading its body
        and encoding its inputs count)."""
        return Job(task, self.model.tasks.id_of(task), self._deliver, arrived + self.options.timeout,
                   sink=_Sink(endpoint), **kw)

    # -- endpoints -------------------------------------------------------------------------
    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "tasks": self.tasks, "running": self.scheduler.running,
                             "queued": self.scheduler.queued})

    def _refused(self, request: Request) -> Response | None:
        """The 401 answer for a request without the API key, or None."""
        try:
            self._authorize(request)
        except ApiError as e:
            return _error(e)
        return None

    async def metrics_endpoint(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        data = [{"id": t.name, "object": "model", "created": 0, "owned_by": "alter-edge", "kind": t.kind}
                for t in self.model.tasks]
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool) -> Response:
        endpoint = "chat" if chat else "completions"
        arrived = time.monotonic()
        try:
            body = await self._body(request)
            sched = self.scheduler
            req = generation_request(body, chat, self.tasks, sched.max_tokens,
                                     min(self.model.bundle.max_new_tokens, sched.max_tokens))
            ids = self._prompt(req.text, req.task, req.truncate, req.input_field)
            job = self._job(endpoint, req.task, arrived, prompt=ids, params=req.params)
            self._submit(job)
        except ApiError as e:
            return _error(e)
        except AlterEdgeError as e:  # SamplingParams' own checks
            return _error(ApiError(400, str(e), None, "invalid_value"))
        rid, created = new_id("chatcmpl" if chat else "cmpl"), int(time.time())
        if req.stream:
            return _EventStream(self._sse(job, rid, created, chat, len(ids), req.include_usage),
                                lambda: self.scheduler.cancel(job))
        collect = asyncio.ensure_future(self._collect(job))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not collect.done():  # the client went away: its slot is freed at the next step
                collect.cancel()
                self.scheduler.cancel(job)
        if not collect.done() or collect.cancelled():
            return Response(status_code=499)
        text, reason = collect.result()
        if reason in (DEADLINE, SHUTDOWN):
            return _error(self._ended(reason))
        return JSONResponse(completion(rid, req.task, text, reason, len(ids), job.tokens, chat, created))

    def _ended(self, reason: str) -> ApiError:
        if reason == DEADLINE:
            return ApiError(504, f"the request's deadline of {self.options.timeout:g} s passed", None,
                            "deadline_exceeded", type="timeout_error")
        return ApiError(503, "the server is shutting down", None, "shutting_down", type="server_error")

    async def _collect(self, job: Job) -> tuple[str, str]:
        text = []
        while True:
            for ev in await job.sink.queue.get():
                text.append(ev.text)
                if ev.finish_reason:
                    return "".join(text), ev.finish_reason

    async def _sse(self, job: Job, rid: str, created: int, chat: bool, prompt_tokens: int, include_usage: bool):
        task = job.task
        try:
            if chat:
                yield _data(chunk(rid, task, created, chat, role=True))
            reason = None
            while reason is None:
                for ev in await job.sink.queue.get():
                    if ev.finish_reason in (DEADLINE, SHUTDOWN):
                        reason = ev.finish_reason
                        yield _data(self._ended(reason).body())
                        break
                    if ev.text:
                        yield _data(chunk(rid, task, created, chat, text=ev.text))
                    if ev.finish_reason:
                        reason = ev.finish_reason
                        yield _data(chunk(rid, task, created, chat, reason=reason))
            if include_usage:
                yield _data(chunk(rid, task, created, chat, usage_=usage(prompt_tokens, job.tokens)))
            yield "data: [DONE]\n\n"
        finally:
            self.scheduler.cancel(job)

    async def classify(self, request: Request) -> Response:
        arrived = time.monotonic()
        try:
            body = await self._body(request)
            task, texts, single, truncate = classify_request(body, self.tasks, self.options.max_classify_inputs)
            self.model.label_ids(task)  # a TaskError for a task without labels
            prompts = [self._prompt(t, task, truncate, "input" if single else f"input[{i}]")
                       for i, t in enumerate(texts)]
            job = self._job("classify", task, arrived, prompts=prompts)
            self._submit(job)
        except ApiError as e:
            return _error(e)
        except AlterEdgeError as e:
            return _error(ApiError(400, str(e), "model", "invalid_value"))
        gone = asyncio.ensure_future(_disconnected(request))
        got = asyncio.ensure_future(job.sink.queue.get())
        try:
            await asyncio.wait({got, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not got.done():
                got.cancel()
                self.scheduler.cancel(job)
        if not got.done() or got.cancelled():
            return Response(status_code=499)
        result = got.result()[0]
        if isinstance(result, Exception):
            raise result
        if hasattr(result, "finish_reason"):  # a TokenEvent: deadline or shutdown
            return _error(self._ended(result.finish_reason))
        data = [{"index": i, "label": c.label, "probability": c.probability, "scores": c.scores}
                for i, c in enumerate(result)]
        n = sum(len(p) for p in prompts)
        return JSONResponse({"object": "list", "model": task, "data": data,
                             "usage": {"prompt_tokens": n, "total_tokens": n}})


class _EventStream(StreamingResponse):
    """SSE whose job is cancelled the moment the client goes away (seen by a watcher on
    ``receive``, or by a failed send), or when the stream ends."""

    def __init__(self, events, on_close):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        stream = asyncio.ensure_future(super().__call__(scope, receive, send))
        gone = asyncio.ensure_future(_disconnected_receive(receive))
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.on_close()
            gone.cancel()
            if not stream.done():
                stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientDisconnect, OSError):
                await stream


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read)."""
    await _disconnected_receive(request.receive)


async def _disconnected_receive(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
