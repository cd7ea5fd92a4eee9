"""The decode loop: right-padded batches, per-row eos, greedy or sampled tokens, stop strings,
continuous refill of finished rows' slots.

One graph serves the prompt and every decode step (docs/bundle-format.md). Step 0 feeds the
whole right-padded prompt batch into a KV cache allocated once; each later step feeds one token
per row, written in place at that row's own position. A row that has finished frees its slot
for the next waiting row (:func:`decode`, ``slots``) or, with none waiting, leaves the batch;
greedy outputs match the PyTorch reference ``training.evaluate.greedy_generate`` token for
token.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from alter_edge.errors import ConfigError
from alter_edge.padding import pad_rows

from .session import GraphRunner

log = logging.getLogger(__name__)

# Sampling temperatures: 0 is greedy; below MIN, logits / temperature overflow (a subnormal such as
# 5e-324 makes every logit inf and the draw garbage); above MAX the distribution is uniform.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0
MAX_SEED = 2**63 - 1  # seeds are 0..MAX_SEED for both engines (a signed 64-bit integer, as OpenAI's seed)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples from softmax(logits / temperature)
    top_k: int = 0  # keep the k most likely tokens before sampling; 0 (or k over the vocabulary) = all
    top_p: float = 1.0  # nucleus: keep the smallest set whose probability reaches top_p
    seed: int | None = None  # sampling seed; each row draws from its own stream (seed, row)
    stop: tuple[str, ...] = ()  # a row ends when its text contains one (the text ends before it)
    ignore_eos: bool = False  # benchmarks: always run max_new_tokens steps

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # one stop string, not its letters
            object.__setattr__(self, "stop", (self.stop,))
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {shown_value(self.max_new_tokens)}")
        if not _is_real(self.temperature) or not (
                self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise ConfigError(f"temperature must be 0 (greedy) or a number in {MIN_TEMPERATURE:g}..{MAX_TEMPERATURE:g}, "
                              f"got {shown_value(self.temperature)}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {shown_value(self.top_k)}")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be a number in (0, 1], got {shown_value(self.top_p)}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise ConfigError(f"seed must be an integer in 0..2**63-1 or None, got {shown_value(self.seed)}")
        try:
            stop = tuple(self.stop)
        except TypeError:
            raise ConfigError(f"stop must be a string or a list of strings, got {shown_value(self.stop)}") from None
        if any(not isinstance(s, str) or not s for s in stop):
            raise ConfigError(f"stop strings must be non-empty strings, got {shown_value(self.stop)}")
        object.__setattr__(self, "stop", stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def shown_value(v: object) -> str:
    """``v`` for a message, short and on one line: an integer of more than 20 digits by its
    length, else its repr (cut to 80 characters; one that cannot be shown, by its type)."""
    if _is_int(v) and abs(v) >= 10**20:  # str() of one over Python's 4,300-digit limit raises
        return f"an integer of {_digits(int(abs(v)))} digits"
    try:
        text = repr(v)
    except (ValueError, RecursionError):  # holds an integer over the digit limit, or too deep
        return f"a {type(v).__name__} too large to show"
    return text if len(text) <= 80 else text[:80] + "..."


def _digits(n: int) -> int:
    """Decimal digits of ``n`` > 0, without str() (which refuses past 4,300 digits)."""
    d = max(1, int(n.bit_length() * 0.30102999566398120))  # floor(log10(2**bits)), within one
    return d + 1 if n >= 10**d else d


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too big for a float
        return False


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


class TokenPicker:
    """Chooses each row's next token from last-position logits (B, V). Row ``r`` draws from its
    own random stream ``(seed, r)``, made when the row first samples."""

    def __init__(self, params: SamplingParams):
        self.p = params
        self.entropy = None if params.greedy else (
            params.seed if params.seed is not None else np.random.SeedSequence().entropy)
        self.rngs: dict[int, np.random.Generator] = {}

    def rng(self, row: int) -> np.random.Generator:
        g = self.rngs.get(row)
        if g is None:
            g = self.rngs[row] = np.random.default_rng([self.entropy, row])
        return g

    def __call__(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``rows``: the original row of each logits row (whose random stream it draws from)."""
        if self.entropy is None:
            return logits.argmax(-1).astype(np.int64)
        x = logits.astype(np.float64)  # (B, V), a new array: the caller's logits stay as they are
        x /= self.p.temperature
        V = x.shape[-1]
        if 0 < self.p.top_k < V:
            kth = np.partition(x, V - self.p.top_k, axis=-1)[:, V - self.p.top_k, None]
            x[x < kth] = -np.inf
        probs = np.exp(x - x.max(-1, keepdims=True), out=x)
        probs /= probs.sum(-1, keepdims=True)
        out = np.empty(len(probs), dtype=np.int64)
        for i, (p, r) in enumerate(zip(probs, rows, strict=True)):
            keep = _nucleus(p, self.p.top_p) if self.p.top_p < 1.0 else None
            u = self.rng(int(r)).random()
            if keep is None:
                c = np.cumsum(p)
                out[i] = min(int(np.searchsorted(c, u * c[-1], side="right")), V - 1)
            else:  # the kept tokens in vocabulary order: their running sums are the full vector's
                c = np.cumsum(p[keep])
                j = int(np.searchsorted(c, u * c[-1], side="right"))
                out[i] = keep[j] if j < len(keep) else V - 1
        return out


def _nucleus(p: np.ndarray, top_p: float, first: int = 1024) -> np.ndarray:
    """The ids (ascending) of the smallest set of most likely tokens whose probability reaches
    ``top_p``: the most likely always, then each next one while the mass before it is below
    ``top_p``. Sorts only the ``first`` most likely tokens (equal probabilities in id order),
    and the whole vocabulary, as a full sort did before, only when the set does not end inside
    them (a flat distribution)."""
    V = len(p)
    m = min(first, V)
    if m < V and float(p.max()) * m >= top_p:  # else the m most likely cannot reach top_p
        top = np.sort(np.argpartition(p, V - m)[V - m:])
        top = top[np.argsort(-p[top], kind="stable")]  # most likely first, ties by id
        n = _nucleus_size(p[top], top_p)
        if n is not None:
            return np.sort(top[:n])
    order = np.argsort(-p)
    n = _nucleus_size(p[order], top_p)
    if n is None:
        return np.arange(V)
    keep = np.zeros(V, dtype=bool)
    keep[order[:n]] = True
    return np.flatnonzero(keep)


def _nucleus_size(sp: np.ndarray, top_p: float) -> int | None:
    """How many of these probabilities, most likely first, the nucleus keeps (None: all, and
    it may go on past them)."""
    ends = np.flatnonzero(np.cumsum(sp) - sp >= top_p)  # the mass sorted ahead of each
    return int(ends[0]) if len(ends) else None


GREEDY = TokenPicker(SamplingParams())  # argmax: keeps no state, shared by every greedy row


def decode(runner: GraphRunner, prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
           eos_id: int, pad_id: int, params: SamplingParams | Sequence[SamplingParams],
           done: np.ndarray | None = None, yield_eos: bool = False, slots: int | None = None,
           refill_at: int = 1) -> Iterator[tuple[int, int | None]]:
    """Yield ``(row, token_id)`` for every generated token, in step order; a row stops at its
    eos (not yielded, or yielded as ``(row, None)`` with ``yield_eos``) or after its
    ``max_new_tokens``. A caller may set ``done[row] = True`` between yields (a stop string) and
    that row gets no more tokens. ``params``: one SamplingParams for every row, or one per row.

    ``slots``: how many rows decode together (None: all of them), in one :class:`SlotPool`
    whose KV cache is allocated once for the longest prompt plus ``max_new_tokens`` of any row.
    A row that finishes frees its slot for the next waiting row (continuous refill, see
    :class:`SlotPool`); every row gets exactly the tokens it gets alone. When no row is waiting
    and a quarter or more of the slots are free, the finished slots leave the batch (their
    cache rows with them), so a long answer does not drag finished rows along."""
    n = len(prompts)
    if n == 0:
        return
    row_params, tids = _decode_args(prompts, task_ids, params, slots, refill_at)
    done = np.zeros(n, dtype=bool) if done is None else done
    pickers: dict[SamplingParams, TokenPicker] = {}  # rows with the same params share one (row = stream)
    B = n if slots is None else min(int(slots), n)
    longest = max(len(p) + q.max_new_tokens for p, q in zip(prompts, row_params, strict=True))
    pool = SlotPool(runner, eos_id, pad_id, B, longest, refill_at)
    for i, (p, t, q) in enumerate(zip(prompts, tids.tolist(), row_params, strict=True)):
        pool.add(i, p, t, q, pickers.setdefault(q, TokenPicker(q)), i, done[i])
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


def _decode_args(prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
                 params: SamplingParams | Sequence[SamplingParams], slots: int | None,
                 refill_at: int) -> tuple[list[SamplingParams], np.ndarray]:
    """:func:`decode_args` plus the own loop's ``refill_at``."""
    checked = decode_args(prompts, task_ids, params, slots)
    if not _is_int(refill_at) or refill_at < 1:
        raise ConfigError(f"refill_at must be an integer >= 1, got {shown_value(refill_at)}")
    return checked


def decode_args(prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
                params: SamplingParams | Sequence[SamplingParams],
                slots: int | None) -> tuple[list[SamplingParams], np.ndarray]:
    """(one SamplingParams per row, task ids int64 (n,)) after checking the arguments every
    decode engine takes (this loop's :func:`decode` and ``GenaiRunner.decode``): a ConfigError
    naming the argument otherwise. The sampling values themselves are checked by
    :class:`SamplingParams`, once, for both engines."""
    n = len(prompts)
    if any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token")
    if isinstance(params, SamplingParams):
        row_params = [params] * n
    elif isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
        raise ConfigError(f"params must be a SamplingParams or one per row, got {type(params).__name__}")
    else:
        row_params = list(params)
    wrong = [type(q).__name__ for q in row_params if not isinstance(q, SamplingParams)]
    if wrong:
        raise ConfigError(f"params must be a SamplingParams or one per row, got a list holding {wrong[0]}")
    try:
        tids = np.asarray(task_ids, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError("task_ids must be integers, one per prompt") from None
    if tids.ndim != 1 or len(row_params) != n or len(tids) != n:
        raise ConfigError(f"{n} prompts need {n} task ids and params, got {tids.size} and {len(row_params)}")
    if slots is not None and (not _is_int(slots) or slots < 1):
        raise ConfigError(f"slots must be an integer >= 1 or None (all rows), got {shown_value(slots)}")
    return row_params, tids


@dataclass(eq=False)  # rows compare by identity
class _Waiting:
    key: object  # the caller's name for the row (decode: its index; the server: its request)
    prompt: Sequence[int]
    task: int
    params: SamplingParams
    picker: TokenPicker
    stream: int  # the row's random stream in its picker
    done: bool = False


class SlotPool:
    """The rows decoding together in ``size`` slots of one KV cache of ``max_len`` positions,
    allocated once: for each slot, the row it holds (None: free), that row's valid tokens, task
    id, next token to feed, token count and budget. Rows are appended with :meth:`add` (while
    the pool runs: the server; all at once: :func:`decode`) and enter in order; :meth:`step`
    runs the graph once and yields ``(key, token)`` for each row that got a token (``None``: its
    eos). Once ``refill_at`` slots are free (or every slot, or all the rows still waiting fit),
    the next waiting rows run their right-padded prompts as one step of their own, in a small
    cache whose entries are copied into the free slots (filling every slot: in the cache itself),
    and decode on with the others, each token written at that row's own position. A row that
    ends (eos, its ``max_new_tokens``, or :meth:`cancel`) frees its slot at once. A pool that is
    closed (no more rows will come) drops finished slots when a quarter or more are free."""

    def __init__(self, runner: GraphRunner, eos_id: int, pad_id: int, size: int, max_len: int,
                 refill_at: int = 1):
        self.runner, self.eos_id, self.pad_id, self.refill_at = runner, eos_id, pad_id, refill_at
        self.max_len = max_len
        self.cache = runner.new_cache(size, max_len)
        self.key: list[_Waiting | None] = [None] * size  # the row each slot holds
        self.lengths = np.ones(size, dtype=np.int64)  # a free slot: 1, the cheapest
        self.task = np.zeros(size, dtype=np.int64)
        self.cur = np.full(size, pad_id, dtype=np.int64)
        self.count = np.zeros(size, dtype=np.int64)  # tokens generated
        self.waiting: deque[_Waiting] = deque()
        self._queued: dict[object, _Waiting] = {}  # waiting rows not cancelled: key -> row
        self.slot_of: dict[object, int] = {}  # running rows: key -> slot
        self.closed = False

    @property
    def size(self) -> int:
        return len(self.key)

    @property
    def running(self) -> int:
        return len(self.slot_of)

    @property
    def queued(self) -> int:
        """Rows added that have not entered yet (and are not cancelled)."""
        return len(self._queued)

    @property
    def free(self) -> int:
        return self.size - len(self.slot_of)

    @property
    def busy(self) -> bool:
        return bool(self.slot_of or self._queued)

    def add(self, key: object, prompt: Sequence[int], task: int, params: SamplingParams,
            picker: TokenPicker | None = None, stream: int = 0, done: bool = False) -> None:
        """Queue a row; it enters at a step when a slot is free. ``picker``: the TokenPicker the
        row draws with, from its random ``stream`` (default: greedy, or one of its own)."""
        if not prompt:
            raise ConfigError("every prompt needs at least one token")
        if len(prompt) + params.max_new_tokens > self.max_len:
            raise ConfigError(f"{len(prompt)} prompt tokens plus max_new_tokens {params.max_new_tokens} exceed "
                              f"the {self.max_len} positions of this batch's KV cache")
        if picker is None:
            picker = GREEDY if params.greedy else TokenPicker(params)
        w = _Waiting(key, prompt, int(task), params, picker, stream, done)
        self.waiting.append(w)
        if not done:
            self._queued[key] = w

    def close(self) -> None:
        self.closed = True

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
        may :meth:`cancel` a row between yields."""
        while self.waiting and self.waiting[0].done:
            self.waiting.popleft()
        free = [j for j, k in enumerate(self.key) if k is None]
        n_wait = len(self._queued)
        if n_wait and len(free) >= min(self.refill_at, n_wait, self.size):
            take, logits = self._enter(np.asarray(free))
        elif not self.slot_of:
            return
        else:
            if self.closed and not n_wait and 4 * len(free) >= self.size:
                self._compact()
            take, logits = self._decode_step()
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

    def _pick(self, rows: list[_Waiting], take: np.ndarray, logits: np.ndarray) -> np.ndarray:
        first = rows[0].picker
        streams = np.asarray([r.stream for r in rows], dtype=np.int64)
        if all(r.picker is first for r in rows):
            return first(logits, streams)
        out = np.empty(len(rows), dtype=np.int64)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(id(r.picker), []).append(i)
        for idx in groups.values():
            ix = np.asarray(idx)
            out[ix] = rows[idx[0]].picker(logits[ix], streams[ix])
        return out

    def _enter(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The next waiting rows take the ``free`` slots: (their slots, their prompt logits (k, V))."""
        rows: list[_Waiting] = []
        while self.waiting and len(rows) < len(free):
            w = self.waiting.popleft()
            if not w.done:
                rows.append(w)
                del self._queued[w.key]
        k = len(rows)
        take = free[:k]
        ids, lens = pad_rows([r.prompt for r in rows], self.pad_id)
        tids = np.asarray([r.task for r in rows], dtype=np.int64)
        if k == self.size:
            logits = self.runner.step(ids, lens, tids, self.cache, copy=False)
        else:
            fresh = self.runner.new_cache(k, ids.shape[1])
            logits = self.runner.step(ids, lens, tids, fresh, copy=False)
            self.cache.write_rows(take, fresh, np.arange(k), ids.shape[1])
        for j, r in zip(take.tolist(), rows, strict=True):
            self.key[j] = r
            self.slot_of[r.key] = j
        self.lengths[take], self.task[take], self.count[take] = lens, tids, 0
        return take, logits[:, 0]

    def _release(self, slot: int) -> None:
        r = self.key[slot]
        if r is not None:
            r.done = True
            self.slot_of.pop(r.key, None)
        self.key[slot], self.lengths[slot], self.cur[slot] = None, 1, self.pad_id

    def _compact(self) -> None:
        """Free slots leave the batch, their cache rows with them."""
        keep = np.asarray([j for j, k in enumerate(self.key) if k is not None], dtype=np.int64)
        self.cache = self.cache.select_rows(keep)
        self.key = [self.key[j] for j in keep.tolist()]
        self.lengths, self.task, self.cur, self.count = (self.lengths[keep], self.task[keep], self.cur[keep],
                                                         self.count[keep])
        self.slot_of = {r.key: j for j, r in enumerate(self.key)}

    def _decode_step(self) -> tuple[np.ndarray, np.ndarray]:
        """One token per live slot, written at that row's own position: (the live slots, their logits)."""
        live = np.asarray([k is not None for k in self.key])
        self.lengths = np.where(live, self.lengths + 1, 1)
        out = self.runner.step(np.where(live, self.cur, self.pad_id)[:, None], self.lengths, self.task,
                               self.cache, copy=False)[:, 0]
        take = np.flatnonzero(live)
        return take, (out[take] if len(take) < self.size else out)


class RowText:
    """Incremental detokenization of one row, with stop strings.

    ``push`` returns the text that is safe to show now: never a partial UTF-8 character, never
    a tail that might be the start of a stop string. The text drops leading whitespace (the
    model emits answers as ``" " + target``), so the pieces add up to the final ``text``.

    ``text`` is always what decoding all of the row's ids at once gives, but a token costs a
    decode of a few ids, not of all of them: the ids up to a point where the text ended on a
    whole character are settled (their text cannot change), and each token decodes only the
    ids after the last settled group, with that group before them for context (a tokenizer
    that treats the first token specially treats both decodes alike); the new text is what
    that decode adds to the context's own. A decode that does not start with its context's
    text (a tokenizer whose text is not built left to right) falls back to decoding all ids.
    Stop strings are searched in the new text and the few settled characters before it.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tok = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.emitted = 0
        self.stopped = False
        self._keep = max((len(s) for s in stop), default=1) - 1  # settled chars a stop string may need
        self._settled: list[str] = []  # the settled text (of ids[:_end]), in pieces
        self._settled_len = 0
        self._recent = ""  # its last _keep characters
        self._start = self._end = 0  # the context ids[_start:_end]; settled up to _end
        self._context = ""  # decode(ids[_start:_end])
        self._tail = ""  # the text of ids[_end:]: the whole text is settled + tail
        self._lead: int | None = None  # leading whitespace of the whole text, once that has more
        self._final: str | None = None  # the text once a stop string cut it

    @property
    def text(self) -> str:
        if self._final is not None:
            return self._final
        return ("".join(self._settled) + self._tail)[self._lead_now():]

    def _decode(self, start: int) -> str:
        return self.tok.decode(self.ids[start:], skip_special_tokens=True)

    def _lead_now(self) -> int:
        """Leading whitespace characters of the whole text (all of them while it is only that)."""
        if self._lead is not None:
            return self._lead
        return self._settled_len + len(self._tail) - len(self._tail.lstrip())

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        new = self._decode(self._start)
        if new.startswith(self._context):
            self._tail = new[len(self._context):]
        else:  # not built left to right here: start over from the whole text
            self._settled, self._settled_len, self._recent = [], 0, ""
            self._start = self._end = 0
            self._context, self._tail = "", self._decode(0)
        lead = self._lead_now()
        # the window: the last settled characters (a stop string's start) and the new text
        base = self._settled_len - len(self._recent)
        window = self._recent + self._tail
        size = self._settled_len + len(self._tail) - lead  # len(text)
        # no stop string lies inside the settled text (the last push searched it)
        frm = max(lead, self._settled_len - self._keep) - base
        cut = min((k for k in (window.find(s, frm) for s in self.stop) if k >= 0), default=-1)
        if cut >= 0:
            end = base + cut - lead
            piece = self._slice(window, base, lead, end)
            self._final, self.stopped = self.text[:end], True
            return piece
        safe = size - (len(self._tail) - len(self._tail.rstrip("\ufffd")))  # an incomplete character
        hold = max((n for s in self.stop for n in range(1, min(len(s), safe + 1))
                    if window.endswith(s[:n], 0, safe + lead - base)), default=0)  # may grow into a stop string
        piece = self._slice(window, base, lead, safe - hold)
        if self._tail and not self._tail.endswith("\ufffd"):  # new text ending on a whole character
            self._settle(lead)
        return piece

    def _settle(self, lead: int) -> None:
        tail = self._tail
        self._settled.append(tail)
        self._settled_len += len(tail)
        if self._keep:
            self._recent = (self._recent + tail)[-self._keep:]
        if self._lead is None and tail.strip():
            self._lead = lead
        self._start, self._end = self._end, len(self.ids)
        self._context, self._tail = self._decode(self._start), ""

    def _slice(self, window: str, base: int, lead: int, upto: int) -> str:
        """Emit text[emitted:upto] (text positions), read from the window when it covers them."""
        upto = max(upto, self.emitted)
        a, b = self.emitted + lead - base, upto + lead - base
        piece = window[a:b] if a >= 0 else self.text[self.emitted:upto]
        self.emitted = upto
        return piece

    def finish(self) -> str:
        text = self.text
        piece = text[self.emitted:] if len(text) > self.emitted else ""
        self.emitted = max(self.emitted, len(text))
        return piece
