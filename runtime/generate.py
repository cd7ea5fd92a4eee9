"""The decode loop: right-padded batches, per-row eos, greedy or sampled tokens, stop strings,
continuous refill of finished rows' slots.

One graph serves the prompt and every decode step (docs/bundle-format.md). Step 0 feeds the
whole right-padded prompt batch into the KV cache (a prompt that starts with its task's cached
prefix feeds only the rest, ``runtime.prefix``); each later step feeds one token
per row, written in place at that row's own position. A row that has finished frees its slot
for the next waiting row (:func:`decode`, ``slots``) or, with none waiting, leaves the batch;
greedy outputs match the PyTorch reference ``training.evaluate.greedy_generate`` token for
token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from alter_edge.errors import ConfigError

from .sampling import (
    GREEDY,
    MAX_SEED,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    SamplingParams,
    TokenPicker,
    is_int,
    log_softmax,
    nucleus,
    shown_value,
)
from .session import GraphRunner
from .slots import SlotPool, drive_pool
from .text import RowText

__all__ = ["GREEDY", "MAX_SEED", "MAX_TEMPERATURE", "MIN_TEMPERATURE", "RowText", "SamplingParams", "SlotPool",
           "TokenPicker", "nucleus", "decode", "decode_args", "log_softmax", "shown_value"]

log = logging.getLogger(__name__)


def decode(runner: GraphRunner, prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
           eos_id: int, pad_id: int, params: SamplingParams | Sequence[SamplingParams],
           done: np.ndarray | None = None, yield_eos: bool = False, slots: int | None = None,
           refill_at: int = 1, prefill_tokens: int | None = None) -> Iterator[tuple[int, int | None]]:
    """Yield ``(row, token_id)`` for every generated token, in step order; a row stops at its
    eos (not yielded, or yielded as ``(row, None)`` with ``yield_eos``) or after its
    ``max_new_tokens``. A caller may set ``done[row] = True`` between yields (a stop string) and
    that row gets no more tokens. ``params``: one SamplingParams for every row, or one per row.

    ``slots``: how many rows decode together (None: all of them), in one :class:`SlotPool`
    whose KV cache rows hold the longest prompt plus ``max_new_tokens`` of any row.
    A row that finishes frees its slot for the next waiting row (continuous refill, see
    :class:`SlotPool`); every row gets exactly the tokens it gets alone. When no row is waiting
    and a quarter or more of the slots are free, the finished slots leave the batch (their
    cache rows with them), so a long answer does not drag finished rows along.
    ``prefill_tokens``: interleave prompts with decode steps, at most this many prompt tokens a
    step (:class:`SlotPool`); None: prompts enter in steps of their own."""
    n = len(prompts)
    if n == 0:
        return
    row_params, tids = _decode_args(prompts, task_ids, params, slots, refill_at)
    done = np.zeros(n, dtype=bool) if done is None else done
    B = n if slots is None else min(int(slots), n)
    longest = max(len(p) + q.max_new_tokens for p, q in zip(prompts, row_params, strict=True))
    pool = SlotPool(runner, eos_id, pad_id, B, longest, refill_at, prefill_tokens)
    yield from drive_pool(pool, prompts, tids, row_params, done, yield_eos)


def _decode_args(prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
                 params: SamplingParams | Sequence[SamplingParams], slots: int | None,
                 refill_at: int) -> tuple[list[SamplingParams], np.ndarray]:
    """:func:`decode_args` plus the own loop's ``refill_at``."""
    checked = decode_args(prompts, task_ids, params, slots)
    if not is_int(refill_at) or refill_at < 1:
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
    if slots is not None and (not is_int(slots) or slots < 1):
        raise ConfigError(f"slots must be an integer >= 1 or None (all rows), got {shown_value(slots)}")
    return row_params, tids

