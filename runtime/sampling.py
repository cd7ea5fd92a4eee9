"""Sampling: the per-request sampling parameters and the token picker (greedy, temperature,
top-k, top-p), each row drawing from its own seeded random stream. Split out of
``runtime.generate``, which still exports every public name here."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alter_edge.errors import ConfigError

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
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {shown_value(self.max_new_tokens)}")
        if not _is_real(self.temperature) or not (
                self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise ConfigError(f"temperature must be 0 (greedy) or a number in {MIN_TEMPERATURE:g}..{MAX_TEMPERATURE:g}, "
                              f"got {shown_value(self.temperature)}")
        if not is_int(self.top_k) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {shown_value(self.top_k)}")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be a number in (0, 1], got {shown_value(self.top_p)}")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
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
    if is_int(v) and abs(v) >= 10**20:  # str() of one over Python's 4,300-digit limit raises
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


def is_int(v: object) -> bool:
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
            keep = nucleus(p, self.p.top_p) if self.p.top_p < 1.0 else None
            u = self.rng(int(r)).random()
            if keep is None:
                c = np.cumsum(p)
                out[i] = min(int(np.searchsorted(c, u * c[-1], side="right")), V - 1)
            else:  # the kept tokens in vocabulary order: their running sums are the full vector's
                c = np.cumsum(p[keep])
                j = int(np.searchsorted(c, u * c[-1], side="right"))
                out[i] = keep[j] if j < len(keep) else V - 1
        return out


def nucleus(p: np.ndarray, top_p: float, first: int = 1024) -> np.ndarray:
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

def pick_tokens(rows: Sequence, logits: np.ndarray) -> np.ndarray:
    """Each row's next token from ``logits`` [rows, V] with its own ``picker`` and random ``stream``
    (rows sharing a picker pick together, in one call)."""
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
