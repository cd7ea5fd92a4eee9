"""The server's scheduler: one thread owns the multi-task graph's session and one KV cache.

Requests of every task wait in one bounded queue and enter the running batch (a
:class:`~alter_edge.runtime.slots.SlotPool`, the runtime's continuous refill) at the next
step with a free slot; each row is fed its own ``task_ids``, so requests of different tasks
decode together. Their prompts enter interleaved with the decode steps, at most
``prefill_tokens`` prompt tokens a step (a longer prompt in chunks over several steps). A request that is cancelled (its client went away) or past its deadline
leaves its slot before the next step. A classify request runs on the same session in chunks of
``max_batch`` inputs, one chunk between two decode steps, so it neither stalls the running
rows nor outlives its deadline; one runs at a time (the next ones wait in the queue), and it
counts in ``running`` while it runs. Nothing here imports the web stack: the app hands in a
``deliver`` callback.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from alter_edge.errors import ConfigError

from ..generate import GREEDY, RowText, SamplingParams, TokenPicker
from ..model import EdgeModel, TokenEvent, row_events

log = logging.getLogger(__name__)

DEADLINE = "deadline"  # the finish reason of a request whose deadline passed
SHUTDOWN = "shutdown"  # ... of one still queued or running when the scheduler stopped
# prompt tokens fed between two decode steps (SlotPool prefill_tokens; None: each arriving
# prompt runs whole in a step of its own while the running rows wait)
PREFILL_TOKENS = 128


class Overloaded(Exception):
    """The queue is full (the app answers 429), or with ``closed`` the scheduler has stopped (503)."""

    def __init__(self, message: str, closed: bool = False):
        super().__init__(message)
        self.closed = closed


class Job:
    """One request: a generation row (``prompt``, ``params``) or a classify batch (``texts``
    already encoded as ``prompts``). The scheduler calls ``deliver(job, events)`` from its
    thread with each step's :class:`TokenEvent`s (the last has ``finish_reason``), or, for
    classify, ``deliver(job, classifications)``."""

    __slots__ = ("task", "task_id", "prompt", "prompts", "params", "deadline", "created", "first_token",
                 "text", "cancelled", "finished", "tokens", "deliver", "sink", "results")

    def __init__(self, task: str, task_id: int, deliver: Callable, deadline: float,
                 prompt: Sequence[int] | None = None, params: SamplingParams | None = None,
                 prompts: Sequence[Sequence[int]] | None = None, sink: object = None):
        self.task, self.task_id, self.deliver, self.deadline = task, task_id, deliver, deadline
        self.prompt, self.params, self.prompts, self.sink = prompt, params, prompts, sink
        self.created = time.monotonic()
        self.first_token: float | None = None
        self.text: RowText | None = None
        self.cancelled = self.finished = False
        self.tokens = 0
        self.results: list = []  # classify: the classifications of the chunks done so far

    @property
    def classify(self) -> bool:
        return self.prompts is not None


class Scheduler:
    """``submit`` (any thread) queues a job or raises :class:`Overloaded`; ``cancel`` marks one
    to leave at the next step; ``stop`` ends the thread (queued and running jobs finish with
    :data:`SHUTDOWN`). ``metrics``: an object with ``observe_step(queued, running, tokens)``,
    ``first_token(job, seconds)`` and ``finished(job, reason, seconds)`` (or None).
    ``prefill_tokens``: prompt tokens fed between two decode steps (a longer prompt runs in
    chunks over several steps); None: each prompt runs whole in a step of its own."""

    def __init__(self, model: EdgeModel, max_batch: int = 8, max_queue: int = 64,
                 max_tokens: int | None = None, metrics=None, prefill_tokens: int | None = PREFILL_TOKENS):
        if max_batch < 1 or max_queue < 0:
            raise ConfigError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model = model
        engine = model.engine_for(model.tasks.names)
        if engine is None:
            raise ConfigError("serving several tasks needs the bundle's multi-task graph, and this bundle "
                              "has per-task graphs only")
        self.runner = engine.runner  # the graph's GraphRunner (a T5 bundle: its Seq2SeqRunner)
        self.max_tokens = model.bundle.max_new_tokens if max_tokens is None else max_tokens
        limit = model.bundle.kv.max_sequence_length
        max_len = model.bundle.positions(model.bundle.max_prompt_tokens, self.max_tokens)
        if limit and max_len > limit:
            prompt = max_len - self.max_tokens  # 0 for an encoder-decoder: its prompt is not in the cache
            raise ConfigError(f"max_prompt_tokens {model.bundle.max_prompt_tokens} plus `max_tokens` {self.max_tokens} "
                              f"exceed the {limit} positions the graph covers; use at most {limit - prompt}"
                              if prompt else f"`max_tokens` {self.max_tokens} exceeds the {limit} decoder "
                              f"positions the graph covers; use at most {limit}")
        # a decoder LM's SlotPool, or an encoder-decoder's Seq2SeqPool (whose prompts run whole in
        # the encoder: prefill_tokens does not apply to it)
        self.pool = engine.new_pool(model.bundle.eos_id, model.bundle.pad_id, max_batch, max_len, prefill_tokens)
        if prefill_tokens is not None and self.pool.prefill_tokens is None:
            log.info("prompt interleaving (prefill_tokens %d) does not apply to this %s bundle: each prompt runs "
                     "whole in the encoder", prefill_tokens, model.bundle.architecture)
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: list[Job] = []
        self._classifying: deque[Job] = deque()  # the classify job running (one at a time)
        self._stop = False
        self._latency: float | None = None  # moving average of finished requests' seconds
        self._thread = threading.Thread(target=self._loop, name="alter-edge-scheduler", daemon=True)

    # -- any thread ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        """Requests running: rows in the decode batch and the classify request being scored."""
        return self.pool.running + len(self._classifying)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stop:
                raise Overloaded("the server is shutting down", closed=True)
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"the queue is full ({self.max_queue} requests waiting)")
            self._queue.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        if not job.finished:
            job.cancelled = True
            with self._cond:
                self._cond.notify()

    def retry_after(self) -> int:
        """Seconds a client should wait after a 429: about how long the queue takes to drain
        (queued requests / slots x recent request latency), 1 to 60."""
        per = self._latency or 1.0
        return max(1, min(60, math.ceil(len(self._queue) / self.pool.size * per)))

    # -- the scheduler thread ------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stop and not self._queue and not self.pool.busy and not self._classifying:
                        self._cond.wait(0.5)
                        self._observe(0)
                    if self._stop:
                        break
                out: dict[Job, list] = {}
                self._expire(out)
                self._admit(out)
                tokens = self._step(out) if self.pool.busy else 0
                if self._classifying:
                    self._classify_chunk(self._classifying[0], out)
                self._send(out)
                self._observe(tokens)
        except Exception:  # a bug or an onnxruntime failure: fail every request, never hang them
            log.exception("the scheduler failed")
        finally:
            self._shutdown()

    def _finish(self, job: Job, reason: str, out: dict) -> None:
        if job.finished:
            return
        job.finished = True
        if job.text is not None and not job.classify:  # running: leave the pool
            self.pool.cancel(job)
        out.setdefault(job, []).append(TokenEvent(0, None, "", reason))
        self._record(job, reason)

    def _expire(self, out: dict) -> None:
        now = time.monotonic()
        for job in list(self._queue):
            if job.cancelled or now > job.deadline:
                with self._cond:
                    self._queue.remove(job)
                self._finish(job, "cancelled" if job.cancelled else DEADLINE, out)
        for job in [*self._running, *self._classifying]:
            if job.cancelled or now > job.deadline:
                self._finish(job, "cancelled" if job.cancelled else DEADLINE, out)
        self._running = [j for j in self._running if not j.finished]
        self._classifying = deque(j for j in self._classifying if not j.finished)

    def _admit(self, out: dict) -> None:
        """Queued jobs, in order, take what is free: a free slot (a generation row), or the
        classify turn when no classify job runs. A job that must wait lets the ones behind it
        that can start go first."""
        with self._cond:
            admitted = []
            slots = self.pool.free - self.pool.queued
            classify_free = not self._classifying
            for job in self._queue:
                if job.classify and classify_free:
                    classify_free = False
                elif not job.classify and slots > 0:
                    slots -= 1
                else:
                    continue
                admitted.append(job)
            for job in admitted:
                self._queue.remove(job)
        for job in admitted:
            if job.classify:
                self._classifying.append(job)
                continue
            picker = GREEDY if job.params.greedy else TokenPicker(job.params)
            job.text = RowText(self.model.tokenizer, job.params.stop)
            self.pool.add(job, job.prompt, job.task_id, job.params, picker, 0)
            self._running.append(job)

    def _classify_chunk(self, job: Job, out: dict) -> None:
        """Score the running classify job's next ``max_batch`` inputs; its last chunk delivers
        every classification (or the error of a chunk that failed)."""
        lo = len(job.results)
        chunk = job.prompts[lo:lo + self.pool.size]
        try:
            job.results.extend(self.model.classify_ids(chunk, job.task))
        except Exception as e:  # noqa: BLE001 -- reported to its request, the server goes on
            log.exception("classify failed")
            self._classified(job, e, out)
            return
        if len(job.results) >= len(job.prompts):
            self._classified(job, job.results, out)

    def _classified(self, job: Job, result: list | Exception, out: dict) -> None:
        job.finished = True
        self._classifying.remove(job)
        out.setdefault(job, []).append(result)
        self._record(job, "error" if isinstance(result, Exception) else "stop")

    def _step(self, out: dict) -> int:
        tokens = 0
        now = None
        for job, tok in self.pool.step():
            evs = row_events(0, job.text, tok, job.params.max_new_tokens)
            if tok is not None:
                tokens += 1
                job.tokens += 1
                if job.first_token is None:
                    now = now or time.monotonic()
                    job.first_token = now - job.created
                    if self.metrics is not None:
                        self.metrics.first_token(job, job.first_token)
            out.setdefault(job, []).extend(evs)
            reason = evs[-1].finish_reason
            if reason is not None:
                job.finished = True
                if reason == "stop":
                    self.pool.cancel(job)
                self._record(job, reason)
        self._running = [j for j in self._running if not j.finished]
        return tokens

    def _record(self, job: Job, reason: str) -> None:
        seconds = time.monotonic() - job.created
        if reason in ("eos", "stop", "length"):
            self._latency = seconds if self._latency is None else 0.9 * self._latency + 0.1 * seconds
        if self.metrics is not None:
            self.metrics.finished(job, reason, seconds)

    def _send(self, out: dict) -> None:
        for job, evs in out.items():
            try:
                job.deliver(job, evs)
            except Exception:  # noqa: BLE001 -- e.g. the event loop already closed
                log.debug("could not deliver to a request", exc_info=True)

    def _observe(self, tokens: int) -> None:
        if self.metrics is not None:
            self.metrics.observe_step(len(self._queue), self.running, tokens)

    def _shutdown(self) -> None:
        out: dict[Job, list] = {}
        with self._cond:
            self._stop = True
            queued, self._queue = list(self._queue), deque()
        for job in queued + self._running + list(self._classifying):
            self._finish(job, SHUTDOWN, out)
        self._running, self._classifying = [], deque()
        self._send(out)
