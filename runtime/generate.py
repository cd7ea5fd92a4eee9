"""The decode loop: left-padded batches, per-row eos, greedy or sampled tokens, stop strings.

One graph serves the prompt and every decode step (docs/bundle-format.md). Step 0 feeds the
whole right-padded prompt batch into a KV cache allocated once; each later step feeds one token
per row, written in place at that row's own position. A row that has finished keeps feeding the
pad token (its output is ignored) until it leaves the batch; greedy outputs match the PyTorch
reference ``training.evaluate.greedy_generate`` token for token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from alter_edge.errors import ConfigError

from .session import GraphRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples from softmax(logits / temperature)
    top_k: int = 0  # keep the k most likely tokens before sampling; 0 = all
    top_p: float = 1.0  # nucleus: keep the smallest set whose probability reaches top_p
    seed: int | None = None  # sampling seed; each row draws from its own stream (seed, row)
    stop: tuple[str, ...] = ()  # a row ends when its text contains one (the text ends before it)
    ignore_eos: bool = False  # benchmarks: always run max_new_tokens steps

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"stop strings must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids int64 (B, T) padded on the right, lengths int64 (B,))."""
    lengths = np.asarray([len(x) for x in seqs], dtype=np.int64)
    ids = np.full((len(seqs), int(lengths.max())), pad_id, dtype=np.int64)
    for i, x in enumerate(seqs):
        ids[i, :len(x)] = x
    return ids, lengths


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


class TokenPicker:
    """Chooses each row's next token from last-position logits (B, V)."""

    def __init__(self, params: SamplingParams, batch: int):
        self.p = params
        self.rngs = None if params.greedy else [
            np.random.default_rng([params.seed if params.seed is not None else np.random.SeedSequence().entropy, i])
            for i in range(batch)
        ]

    def __call__(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``rows``: the original row of each logits row (whose random stream it draws from)."""
        if self.rngs is None:
            return logits.argmax(-1).astype(np.int64)
        x = logits.astype(np.float64) / self.p.temperature  # (B, V)
        V = x.shape[-1]
        if 0 < self.p.top_k < V:
            kth = np.partition(x, V - self.p.top_k, axis=-1)[:, V - self.p.top_k, None]
            x = np.where(x < kth, -np.inf, x)
        probs = np.exp(x - x.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        if self.p.top_p < 1.0:
            order = np.argsort(-probs, axis=-1)
            sorted_p = np.take_along_axis(probs, order, -1)
            drop_sorted = (np.cumsum(sorted_p, -1) - sorted_p) >= self.p.top_p  # keeps the first always
            drop = np.zeros_like(drop_sorted)
            np.put_along_axis(drop, order, drop_sorted, -1)
            probs = np.where(drop, 0.0, probs)
        out = np.empty(len(probs), dtype=np.int64)
        for i, (p, r) in enumerate(zip(probs, rows, strict=True)):
            c = np.cumsum(p)
            out[i] = min(int(np.searchsorted(c, self.rngs[r].random() * c[-1], side="right")), V - 1)
        return out


def decode(runner: GraphRunner, prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
           eos_id: int, pad_id: int, params: SamplingParams,
           done: np.ndarray | None = None, yield_eos: bool = False) -> Iterator[tuple[int, int | None]]:
    """Yield ``(row, token_id)`` for every generated token, in step order; a row stops at its
    eos (not yielded, or yielded as ``(row, None)`` with ``yield_eos``). A caller may set
    ``done[row] = True`` between yields (a stop string) and that row gets no more tokens.

    The prompt batch is right-padded and its KV cache allocated once for the longest prompt
    plus ``max_new_tokens``; each decode step feeds one token per row and reads one logits row.
    When a quarter or more of the rows still in the batch have finished, they are dropped from
    it (their cache rows with them), so a long answer does not drag finished rows along."""
    if any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token")
    ids, lengths = right_pad(prompts, pad_id)
    B = ids.shape[0]
    tids = np.asarray(task_ids, dtype=np.int64)
    done = np.zeros(B, dtype=bool) if done is None else done
    pick = TokenPicker(params, B)
    cache = runner.new_cache(B, ids.shape[1] + params.max_new_tokens)
    logits = runner.step(ids, lengths, tids, cache)[np.arange(B), lengths - 1]  # (B, V)
    active = np.arange(B)  # original row of each batch row
    for step in range(params.max_new_tokens):
        nxt = pick(logits, active)
        for j, i in enumerate(active):
            if done[i]:
                continue
            if nxt[j] == eos_id and not params.ignore_eos:
                done[i] = True
                if yield_eos:
                    yield int(i), None
            else:
                yield int(i), int(nxt[j])
        live = ~done[active]
        if not live.any() or step + 1 == params.max_new_tokens:
            return
        if 4 * (len(active) - int(live.sum())) >= len(active):
            keep = np.flatnonzero(live)
            cache = cache.select_rows(keep)
            active, lengths, tids, nxt = active[keep], lengths[keep], tids[keep], nxt[keep]
        cur = np.where(done[active], pad_id, nxt)[:, None]
        lengths = lengths + 1
        logits = runner.step(cur, lengths, tids, cache)[:, 0]


class RowText:
    """Incremental detokenization of one row, with stop strings.

    ``push`` returns the text that is safe to show now: never a partial UTF-8 character, never
    a tail that might be the start of a stop string. The text drops leading whitespace (the
    model emits answers as ``" " + target``), so the pieces add up to the final ``text``.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tok = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids, skip_special_tokens=True).lstrip()
        cut = min((k for k in (text.find(s) for s in self.stop) if k >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self._flush(len(self.text))
        self.text = text
        safe = len(text)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character
            safe = len(text.rstrip("\ufffd"))
        hold = max((n for s in self.stop for n in range(1, min(len(s), safe + 1))
                    if text[:safe].endswith(s[:n])), default=0)  # may grow into a stop string
        return self._flush(safe - hold)

    def finish(self) -> str:
        return self._flush(len(self.text))

    def _flush(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        piece = self.text[self.emitted:upto]
        self.emitted = upto
        return piece
