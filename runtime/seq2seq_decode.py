"""Continuous refill on an encoder-decoder (T5) pair: the rows decoding together, each with its own
rows of the cross cache and of the self cache.

A :class:`Seq2SeqPool` holds up to ``size`` rows. A row that enters runs the encoder alone with
the other rows entering at that step (right-padded, ``task_ids`` per row) and appends its rows
of the cross cache (the encoder length axis zero-padded to the longest prompt in the batch,
``encoder_attention_mask`` masking the padding); in the same step its decoder starts from
``decoder_start_token_id``, beside the rows already decoding. Every step feeds
one token per row; the decoder graph returns the past concatenated with the new entries, and a
row that entered late has zeros in its mask for the positions before it (the graph counts a
row's positions by its ones, so those holes are skipped). A finished row leaves the batch at
once (its rows of both caches with it), and the self cache's leading positions that no row
uses any more are dropped, so the cache is as wide as the oldest running row's answer.

Prompts are never interleaved with decode steps (``prefill_tokens``): an encoder runs a whole
prompt in one pass, and the decoder has no prompt to feed. :func:`decode_seq2seq` is
:func:`runtime.generate.decode`'s contract on a pool; every row gets the tokens it gets alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from alter_edge.errors import ConfigError
from alter_edge.padding import length_mask, pad_rows

from .generate import decode_args
from .sampling import SamplingParams, pick_tokens
from .seq2seq import pad_cross
from .slots import QueuedRow, RowQueue, drive_pool

log = logging.getLogger(__name__)


@dataclass(eq=False)  # rows compare by identity
class _Row(QueuedRow):
    count: int = 0  # tokens generated


def encode_rows(runner, prompts: Sequence[Sequence[int]], task_ids: np.ndarray,
                pad_id: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The encoder on right-padded ``prompts`` (``runtime.seq2seq.Seq2SeqRunner.encode``): (the cross
    cache, one array per name of ``layout.cross_names``, [k, heads, enc_len, head_dim]; the
    encoder mask [k, enc_len])."""
    ids, lengths = pad_rows(prompts, pad_id)
    mask = length_mask(lengths, ids.shape[1])
    cross = runner.encode(ids.astype(np.int64), mask, task_ids)
    return list(cross), mask


class Seq2SeqPool(RowQueue):
    """The rows decoding together on one encoder-decoder pair (see the module's docstring), with
    :class:`~runtime.slots.SlotPool`'s interface: :meth:`add` queues a row, :meth:`step` runs
    the decoder once (after the encoder for the rows entering) and yields ``(key, token)`` per
    row (``None``: its eos), :meth:`cancel` ends a row, ``busy``/``free``/``queued``/
    ``running``/``size`` say how full it is. ``prefill_tokens`` is accepted and ignored (no
    prompt is fed to the decoder)."""

    row_type = _Row

    def __init__(self, runner, eos_id: int, pad_id: int, start_id: int, size: int, max_len: int = 0,
                 refill_at: int = 1, prefill_tokens: int | None = None):
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"slots must be an integer >= 1, got {size!r}")
        self.runner, self.eos_id, self.pad_id, self.start_id = runner, eos_id, pad_id, start_id
        self.max_len, self.refill_at = max_len, refill_at
        self.prefill_tokens = None  # kept for the scheduler's sake: prompts are never interleaved
        self.rows: list[_Row] = []  # the running rows, in batch order
        self.slot_of: dict[object, int] = {}
        self._init_queue(size)
        self._clear()

    def _clear(self) -> None:
        kv = self.runner.layout.kv
        empty = np.zeros((0, kv.num_kv_heads, 0, kv.head_dim), np.float32)
        self.past = [empty] * len(kv.past_names)  # self cache [n, heads, width, head_dim]
        self.mask = np.zeros((0, 0), np.int64)  # which self-cache positions each row uses
        self.cross = [empty] * len(self.runner.layout.cross_names)  # [n, heads, enc_len, head_dim]
        self.enc_mask = np.zeros((0, 0), np.int64)
        self.task = np.zeros(0, np.int64)
        self.cur = np.zeros(0, np.int64)  # the token each row feeds next

    @property
    def running(self) -> int:
        return sum(not r.done for r in self.rows)

    @property
    def free(self) -> int:
        return self.size - self.running

    @property
    def busy(self) -> bool:
        return bool(self.running or self._queued)

    def cancel(self, key: object) -> None:
        """The row gets no more tokens: a running row leaves before the next step, a waiting one
        never enters."""
        r = self._queued.pop(key, None)
        if r is None:
            j = self.slot_of.get(key)
            r = None if j is None else self.rows[j]
        if r is not None:
            r.done = True

    def step(self) -> Iterator[tuple[object, int | None]]:
        """Rows that ended leave; the waiting rows take the free slots (their encoder runs); one
        decoder step for every row; yields ``(key, token or None at eos)`` per row."""
        self._leave()
        n_wait = len(self._queued)
        if n_wait and self.free >= min(self.refill_at, n_wait, self.size):
            self._enter(min(n_wait, self.free))
        if not self.rows:
            self._clear()
            return
        logits = self._decode_step()
        yield from self._emit(logits)
        if not self.busy:  # nothing runs or waits: the caches go (the next row allocates again)
            self.rows, self.slot_of = [], {}
            self._clear()

    def _enter(self, k: int) -> None:
        """The next ``k`` waiting rows run the encoder (together) and join the batch."""
        new: list[_Row] = []
        while self.waiting and len(new) < k:
            r = self.waiting.popleft()
            if not r.done:
                new.append(r)
                del self._queued[r.key]
        if not new:
            return
        tids = np.asarray([r.task for r in new], np.int64)
        cross, enc_mask = encode_rows(self.runner, [r.prompt for r in new], tids, self.pad_id)
        width = max(self.enc_mask.shape[1], enc_mask.shape[1])
        old, old_mask = pad_cross(self.cross, self.enc_mask, width)
        cross, enc_mask = pad_cross(cross, enc_mask, width)
        self.cross = [np.concatenate([a, b]) for a, b in zip(old, cross, strict=True)]
        self.enc_mask = np.concatenate([old_mask, enc_mask])
        W, n = self.mask.shape[1], len(new)
        self.past = [np.concatenate([p, np.zeros((n, *p.shape[1:]), np.float32)]) for p in self.past]
        self.mask = np.concatenate([self.mask, np.zeros((n, W), np.int64)])
        self.task = np.concatenate([self.task, tids])
        self.cur = np.concatenate([self.cur, np.full(n, self.start_id, np.int64)])
        self.rows += new
        self.slot_of = {r.key: j for j, r in enumerate(self.rows)}

    def _decode_step(self) -> np.ndarray:
        """One token per row, at the end of the self cache: the rows' logits (n, V)."""
        n = len(self.rows)
        mask = np.concatenate([self.mask, np.ones((n, 1), np.int64)], axis=1)
        logits, present = self.runner.step(self.cur[:, None], mask, self.enc_mask, self.cross, self.past,
                                           self.task)
        self.past, self.mask = list(present), mask
        return logits[:, -1]

    def _emit(self, logits: np.ndarray) -> Iterator[tuple[object, int | None]]:
        rows = list(self.rows)
        for j, (r, t) in enumerate(zip(rows, pick_tokens(rows, logits).tolist(), strict=True)):
            if r.done:
                continue
            if t == self.eos_id and not r.params.ignore_eos:
                r.done = True
                yield r.key, None
                continue
            r.count += 1
            self.cur[j] = t
            if r.count >= r.params.max_new_tokens:
                r.done = True
            yield r.key, t

    def _leave(self) -> None:
        """Rows that ended leave the batch, their cache rows with them; the self cache's leading
        positions no row uses and the cross cache's trailing padding go too."""
        keep = np.asarray([j for j, r in enumerate(self.rows) if not r.done], np.int64)
        if len(keep) < len(self.rows):
            self.rows = [self.rows[j] for j in keep.tolist()]
            self.past = [p[keep] for p in self.past]
            self.cross = [c[keep] for c in self.cross]
            self.mask, self.enc_mask = self.mask[keep], self.enc_mask[keep]
            self.task, self.cur = self.task[keep], self.cur[keep]
            self.slot_of = {r.key: j for j, r in enumerate(self.rows)}
        if not self.rows:
            return
        used = self.mask.any(axis=0)
        first = int(np.argmax(used)) if used.any() else self.mask.shape[1]
        if first:
            self.past = [np.ascontiguousarray(p[:, :, first:]) for p in self.past]
            self.mask = self.mask[:, first:]
        enc = int(self.enc_mask.sum(axis=1).max())
        if enc < self.enc_mask.shape[1]:
            self.cross = [np.ascontiguousarray(c[:, :, :enc]) for c in self.cross]
            self.enc_mask = self.enc_mask[:, :enc]


def decode_seq2seq(runner, start_id: int, prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
                   eos_id: int, pad_id: int, params: SamplingParams | Sequence[SamplingParams],
                   done: np.ndarray | None = None, yield_eos: bool = False,
                   slots: int | None = None) -> Iterator[tuple[int, int | None]]:
    """:func:`runtime.generate.decode`'s contract on an encoder-decoder pair: ``(row, token)``
    for every generated token, in step order, ``slots`` rows at once (None: all) with
    continuous refill; a caller may set ``done[row]`` between yields."""
    n = len(prompts)
    if n == 0:
        return
    row_params, tids = decode_args(prompts, task_ids, params, slots)
    done = np.zeros(n, dtype=bool) if done is None else done
    pool = Seq2SeqPool(runner, eos_id, pad_id, start_id, n if slots is None else min(int(slots), n))
    yield from drive_pool(pool, prompts, tids, row_params, done, yield_eos)
