"""The slot pool: rows decoding together in the slots of one KV cache, with continuous refill
(:class:`SlotPool`; ``runtime.generate.decode`` and the server's scheduler run it). Split out of
``runtime.generate``, which still exports it."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from alter_edge.errors import ConfigError

from .sampling import GREEDY, SamplingParams, TokenPicker, pick_tokens
from .session import GraphRunner, KVCache


@dataclass(eq=False)  # rows compare by identity
class QueuedRow:
    key: object  # the caller's name for the row (decode: its index; the server: its request)
    prompt: Sequence[int]
    task: int
    params: SamplingParams
    picker: TokenPicker
    stream: int  # the row's random stream in its picker
    done: bool = False


# interleaved: a step decodes when at least this share of the slots in use decode (else it feeds
# prompts only); 0: every step decodes
DECODE_SHARE = 0.5


class RowQueue:
    """Rows added (:meth:`add`) and not entered yet: the part of a pool's interface that every pool
    shares. A pool sets ``capacity`` and calls :meth:`_init_queue`; ``row_type`` is its row record,
    :meth:`_check_row` its limits on a row."""

    row_type: type = QueuedRow

    def _init_queue(self, capacity: int) -> None:
        self.capacity = capacity  # slots at most
        self.waiting: deque = deque()
        self._queued: dict[object, QueuedRow] = {}  # waiting rows not cancelled: key -> row
        self.closed = False

    @property
    def size(self) -> int:
        """Slots: rows that may decode at once."""
        return self.capacity

    @property
    def queued(self) -> int:
        """Rows added that have not entered yet (and are not cancelled)."""
        return len(self._queued)

    def close(self) -> None:
        self.closed = True

    def _check_row(self, prompt: Sequence[int], params: SamplingParams) -> None:
        if not prompt:
            raise ConfigError("every prompt needs at least one token")

    def add(self, key: object, prompt: Sequence[int], task: int, params: SamplingParams,
            picker: TokenPicker | None = None, stream: int = 0, done: bool = False) -> None:
        """Queue a row; it enters at a step when a slot is free. ``picker``: the TokenPicker the
        row draws with, from its random ``stream`` (default: greedy, or one of its own)."""
        self._check_row(prompt, params)
        if picker is None:
            picker = GREEDY if params.greedy else TokenPicker(params)
        w = self.row_type(key, prompt, int(task), params, picker, stream, done)
        self.waiting.append(w)
        if not done:
            self._queued[key] = w


class SlotPool(RowQueue):
    """The rows decoding together in up to ``size`` slots of one KV cache of ``max_len``
    positions, allocated on demand (slots on demand: the cache has a row per slot in use or
    recently used, grown by doubling, up to ``size``, as rows enter, and dropped when no row runs
    or waits: memory follows the rows running, not ``size x max_len`` up front): for each slot, the row it holds (None: free), that row's valid tokens, task
    id, next token to feed, token count and budget. Rows are appended with :meth:`add` (while
    the pool runs: the server; all at once: :func:`decode`) and enter in order; :meth:`step`
    runs the graph once and yields ``(key, token)`` for each row that got a token (``None``: its
    eos). Once ``refill_at`` slots are free (or every slot, or all the rows still waiting fit),
    the next waiting rows run their prompts (``GraphRunner.prefill``: a prompt that starts with
    its task's cached prefix feeds only the rest, on its slot; the others as one right-padded
    step of their own, in a small cache whose entries are copied into the free slots, or filling
    every slot, in the cache itself), and decode on with the others, each token written at that row's own position. A row that
    ends (eos, its ``max_new_tokens``, or :meth:`cancel`) frees its slot at once. A pool that is
    closed (no more rows will come) drops finished slots when a quarter or more are free; any
    pool drops its whole cache once nothing runs or waits (at the end of a step).

    ``prefill_tokens``: steps interleave prompts with decoding instead (the server): rows enter
    free slots at once, and each step feeds at most this many prompt tokens (a long prompt in
    chunks over several steps) besides one token for every row whose prompt is done
    (:meth:`_interleaved`)."""

    def __init__(self, runner: GraphRunner, eos_id: int, pad_id: int, size: int, max_len: int,
                 refill_at: int = 1, prefill_tokens: int | None = None):
        self.runner, self.eos_id, self.pad_id, self.refill_at = runner, eos_id, pad_id, refill_at
        if prefill_tokens is not None and (not isinstance(prefill_tokens, int) or prefill_tokens < 1):
            raise ConfigError(f"prefill_tokens must be an integer >= 1 or None, got {prefill_tokens!r}")
        self.prefill_tokens = prefill_tokens  # None: prompts enter in steps of their own
        self.partial: dict[object, int] = {}  # interleaved: rows whose prompt is part fed -> tokens fed
        self.decode_share = DECODE_SHARE
        self.max_len = max_len
        self._init_queue(size)
        self._limit_check(max_len)
        self.cache: KVCache | None = None  # one row per allocated slot (None: none allocated)
        self.key: list[QueuedRow | None] = []  # the row each allocated slot holds
        self.lengths = np.ones(0, dtype=np.int64)  # a free slot: 1, the cheapest
        self.task = np.zeros(0, dtype=np.int64)
        self.cur = np.full(0, pad_id, dtype=np.int64)
        self.count = np.zeros(0, dtype=np.int64)  # tokens generated
        self.slot_of: dict[object, int] = {}  # running rows: key -> slot

    def _limit_check(self, max_len: int) -> None:
        """The graph covers ``max_len`` positions (the error a cache of them would raise, now)."""
        limit = self.runner.kv.max_sequence_length
        if limit and max_len > limit:
            self.runner.new_cache(1, max_len)  # raises its ConfigError

    @property
    def allocated(self) -> int:
        """Slots whose cache rows exist now."""
        return len(self.key)

    @property
    def running(self) -> int:
        return len(self.slot_of)

    @property
    def free(self) -> int:
        return self.size - len(self.slot_of)

    @property
    def busy(self) -> bool:
        return bool(self.slot_of or self._queued)

    def _check_row(self, prompt: Sequence[int], params: SamplingParams) -> None:
        super()._check_row(prompt, params)
        if len(prompt) + params.max_new_tokens > self.max_len:
            raise ConfigError(f"{len(prompt)} prompt tokens plus max_new_tokens {params.max_new_tokens} exceed "
                              f"the {self.max_len} positions of this batch's KV cache")

    def cancel(self, key: object) -> None:
        """The row gets no more tokens: a running row frees its slot before the next step, a
        waiting one never enters."""
        j = self.slot_of.get(key)
        if j is not None:
            self._release(j)
            return
        w = self._queued.pop(key, None)
        if w is not None:
            w.done = True

    def step(self) -> Iterator[tuple[object, int | None]]:
        """One graph run: the next waiting rows' prompts (when enough slots are free) or one
        token for every running row; yields ``(key, token or None at eos)`` per row. A caller
        may :meth:`cancel` a row between yields. With ``prefill_tokens`` a step is interleaved
        instead (:meth:`_interleaved`): at most that many prompt tokens, then one token for
        every running row."""
        while self.waiting and self.waiting[0].done:
            self.waiting.popleft()
        if self.prefill_tokens is not None:
            yield from self._interleaved()
            return
        n_wait = len(self._queued)
        if n_wait and self.free >= min(self.refill_at, n_wait, self.size):
            self._reserve(min(n_wait, self.free))
            take, logits = self._enter(np.asarray([j for j, k in enumerate(self.key) if k is None]))
        elif not self.slot_of:
            self._drop()
            return
        else:
            if self.closed and not n_wait and 4 * (self.allocated - self.running) >= self.allocated:
                self._compact()
            take, logits = self._decode_step()
        yield from self._emit(take, logits)
        self._drop()

    def _interleaved(self) -> Iterator[tuple[object, int | None]]:
        """Waiting rows take the free slots at once (their prompts not fed yet); then up to
        ``prefill_tokens`` prompt tokens run, the first part-fed rows first, each row its own
        step from where it stopped (a long prompt in chunks over several steps; a row that
        starts with its task's cached prefix copies it first); then one decode token for every
        row whose prompt was done before this step (a row whose prompt is done in it has its
        first token from the prompt's logits; the decode step writes a pad at its next position,
        which its next step overwrites). Running rows so wait for one
        bounded chunk of prompt per token, never for whole prompts. While fewer than
        ``decode_share`` of the slots in use decode (a burst of arrivals), a step feeds prompts
        only: a decode step costs about the same for every allocated row, fed or not."""
        n_wait = len(self._queued)
        if n_wait and self.free >= min(self.refill_at, n_wait, self.size):
            self._reserve(min(n_wait, self.free))
            self._admit(np.asarray([j for j, k in enumerate(self.key) if k is None]))
        if not self.slot_of:
            self._drop()
            return
        live = len(self.slot_of) - len(self.partial)
        decoding = live and live >= self.decode_share * len(self.slot_of)
        if decoding and self.closed and not n_wait and not self.partial and \
                4 * (self.allocated - self.running) >= self.allocated:
            self._compact()
        mask = self._live()  # the rows decoding this step: those whose prompt was done before it
        take_p, logits_p = self._prefill_chunks()
        if decoding:
            take, logits = self._decode_step(mask)
            yield from self._emit(take, logits)
        yield from self._emit(take_p, logits_p)
        self._drop()

    def _emit(self, take: np.ndarray, logits: np.ndarray) -> Iterator[tuple[object, int | None]]:
        """Pick a token for each of the slots ``take`` from its logits row and hand it out."""
        if not len(take):
            return
        rows = [self.key[j] for j in take.tolist()]
        for j, r, t in zip(take.tolist(), rows, self._pick(rows, take, logits).tolist(), strict=True):
            if r.done or self.key[j] is not r:
                continue
            if t == self.eos_id and not r.params.ignore_eos:
                self._release(j)
                yield r.key, None
                continue
            self.count[j] += 1
            self.cur[j] = t
            last = self.count[j] == r.params.max_new_tokens
            if last:
                self._release(j)
            yield r.key, t

    def _pick(self, rows: list[QueuedRow], take: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return pick_tokens(rows, logits)

    def _enter(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The next waiting rows take the ``free`` slots: (their slots, their prompt logits (k, V))."""
        rows: list[QueuedRow] = []
        while self.waiting and len(rows) < len(free):
            w = self.waiting.popleft()
            if not w.done:
                rows.append(w)
                del self._queued[w.key]
        k = len(rows)
        take = free[:k]
        tids = np.asarray([r.task for r in rows], dtype=np.int64)
        logits = self.runner.prefill([r.prompt for r in rows], tids, self.cache, take, self.pad_id)
        for j, r in zip(take.tolist(), rows, strict=True):
            self.key[j] = r
            self.slot_of[r.key] = j
        self.lengths[take] = [len(r.prompt) for r in rows]
        self.task[take], self.count[take] = tids, 0
        return take, logits

    def _admit(self, free: np.ndarray) -> None:
        """Interleaved: the next waiting rows take the ``free`` slots, their prompts not fed yet
        (a row whose prompt starts with its task's cached prefix takes that prefix's KV now)."""
        prefixes = self.runner.prefixes
        for j in free.tolist():
            if not self.waiting:
                break
            r = self.waiting.popleft()
            while r.done and self.waiting:
                r = self.waiting.popleft()
            if r.done:
                break
            del self._queued[r.key]
            n, kv = (0, None) if prefixes is None else prefixes.lookup(self.runner, r.task, r.prompt)
            if n:
                for dst, src in zip(self.cache.row(j).arrays, kv, strict=True):
                    dst[:, :, :n] = src[:, :, :n]
            self.key[j], self.slot_of[r.key], self.partial[r.key] = r, j, n
            self.lengths[j], self.task[j], self.count[j], self.cur[j] = n, r.task, 0, self.pad_id

    def _prefill_chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``prefill_tokens`` prompt tokens of the part-fed rows, in the order they came,
        each row one step (batch 1: onnxruntime's GroupQueryAttention takes several new tokens
        after past context only at batch 1) from where its prompt stopped: (the slots whose
        prompts are now done, their last-position logits)."""
        budget = self.prefill_tokens
        take, logits = [], []
        for key, fed in list(self.partial.items()):
            if budget <= 0:
                break
            j = self.slot_of[key]
            r = self.key[j]
            n = min(len(r.prompt) - fed, budget)
            out = self.runner.step(np.asarray([r.prompt[fed:fed + n]], dtype=np.int64),
                                   np.asarray([fed + n], dtype=np.int64), self.task[j:j + 1],
                                   self.cache.row(j), copy=False)
            budget -= n
            self.lengths[j] = fed + n
            if fed + n < len(r.prompt):
                self.partial[key] = fed + n
                continue
            del self.partial[key]
            take.append(j)
            logits.append(out[0, 0].copy())
        if not take:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return np.asarray(take, dtype=np.int64), np.stack(logits)

    def _reserve(self, n: int) -> None:
        """At least ``n`` free allocated slots: the cache grows (by doubling, up to ``size``; the
        running rows' entries copied into the new one)."""
        have = self.allocated - self.running
        if have >= n:
            return
        rows = min(self.capacity, max(self.running + n, 2 * self.allocated))
        old, k = self.cache, self.allocated
        self.cache = self.runner.new_cache(rows, self.max_len)
        if old is not None and self.running:
            self.cache.write_rows(np.arange(k), old, np.arange(k), int(self.lengths.max()))
        extra = rows - k
        self.key += [None] * extra
        self.lengths = np.concatenate([self.lengths, np.ones(extra, dtype=np.int64)])
        self.task = np.concatenate([self.task, np.zeros(extra, dtype=np.int64)])
        self.cur = np.concatenate([self.cur, np.full(extra, self.pad_id, dtype=np.int64)])
        self.count = np.concatenate([self.count, np.zeros(extra, dtype=np.int64)])

    def _drop(self) -> None:
        """No row runs or waits: the cache goes (the next row allocates again)."""
        if self.slot_of or self._queued or self.cache is None:
            return
        self.cache = None
        self.key = []
        self.lengths, self.task = np.ones(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self.cur, self.count = np.full(0, self.pad_id, dtype=np.int64), np.zeros(0, dtype=np.int64)

    def _release(self, slot: int) -> None:
        r = self.key[slot]
        if r is not None:
            r.done = True
            self.slot_of.pop(r.key, None)
            self.partial.pop(r.key, None)
        self.key[slot], self.lengths[slot], self.cur[slot] = None, 1, self.pad_id

    def _compact(self) -> None:
        """Free slots leave the batch, their cache rows with them."""
        keep = np.asarray([j for j, k in enumerate(self.key) if k is not None], dtype=np.int64)
        self.cache = self.cache.select_rows(keep)
        self.key = [self.key[j] for j in keep.tolist()]
        self.lengths, self.task, self.cur, self.count = (self.lengths[keep], self.task[keep], self.cur[keep],
                                                         self.count[keep])
        self.slot_of = {r.key: j for j, r in enumerate(self.key)}

    def _live(self) -> np.ndarray:
        """Which slots hold a row whose prompt is done."""
        live = np.asarray([k is not None for k in self.key], dtype=bool)
        if self.partial:
            live[[self.slot_of[k] for k in self.partial]] = False
        return live

    def _decode_step(self, live: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One token per ``live`` slot (default: every row whose prompt is done), written at that
        row's own position: (the live slots, their logits). Any other row holding a slot (a
        part-fed one, or one whose prompt was done in this step) is fed a pad at the position
        after its tokens, which its next step overwrites; a free slot, at position 0."""
        live = self._live() if live is None else live
        held = np.asarray([k is not None for k in self.key], dtype=bool)
        step_len = np.where(held, self.lengths + 1, 1)
        self.lengths = np.where(live, step_len, self.lengths)
        out = self.runner.step(np.where(live, self.cur, self.pad_id)[:, None], step_len, self.task,
                               self.cache, copy=False)[:, 0]
        take = np.flatnonzero(live)
        return take, (out[take] if len(take) < self.size else out)


def drive_pool(pool, prompts: Sequence[Sequence[int]], tids: np.ndarray, row_params: Sequence[SamplingParams],
               done: np.ndarray, yield_eos: bool) -> Iterator[tuple[int, int | None]]:
    """Queue every row on ``pool`` (a :class:`SlotPool` or an encoder-decoder pool: ``add``,
    ``close``, ``busy``, ``step``, ``cancel``) and run it to the end: ``(row, token)`` per token,
    ``(row, None)`` at a row's eos with ``yield_eos``; a row the caller marks ``done`` leaves."""
    pickers: dict[SamplingParams, TokenPicker] = {}  # rows with the same params share one (row = stream)
    for i, (p, t, q) in enumerate(zip(prompts, tids.tolist(), row_params, strict=True)):
        pool.add(i, p, t, q, GREEDY if q.greedy else pickers.setdefault(q, TokenPicker(q)), i, done[i])
    pool.close()
    while pool.busy:
        for i, tok in pool.step():
            if tok is None:
                done[i] = True
                if yield_eos:
                    yield i, None
                continue
            yield i, tok
            if done[i]:
                pool.cancel(i)

