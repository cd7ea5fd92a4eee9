"""The decode engines behind ``EdgeModel``: one small protocol, two implementations.

A :class:`Decoder` decodes the rows of one request on one graph, under
:func:`runtime.generate.decode`'s contract: ``(row, token id)`` per generated token, a row
ending at its eos (``(row, None)`` with ``yield_eos``) or its ``max_new_tokens``, or when the
caller sets ``done[row]``. :class:`OwnDecoder` is the runtime's own loop (``runtime.generate``)
on a :class:`~runtime.session.GraphRunner`; ``runtime.genai_engine.GenaiRunner`` is
onnxruntime-genai's generator; ``runtime.seq2seq_engine.Seq2SeqEngine`` is the own loop on an
encoder-decoder (T5) pair. Each checks its arguments once, with
:func:`runtime.generate.decode_args`.

The runtime's own engines (:class:`OwnDecoder`, ``Seq2SeqEngine``) also score labels
(``score_labels``) and make the server's slot pool (``new_pool``): :class:`Engine`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from .generate import SamplingParams, decode
from .scoring import score_labels
from .session import GraphRunner
from .slots import SlotPool

Token = tuple[int, "int | None"]


class Decoder(Protocol):
    def decode(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int], eos_id: int, pad_id: int,
               params: SamplingParams | Sequence[SamplingParams], done: np.ndarray | None = None,
               yield_eos: bool = False, slots: int | None = None) -> Iterator[Token]: ...


class Engine(Decoder, Protocol):
    """A Decoder that also scores labels (classify) and runs a slot pool (the server)."""

    def score_labels(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
                     label_ids: Sequence[Sequence[int]], pad_id: int) -> np.ndarray: ...

    def new_pool(self, eos_id: int, pad_id: int, size: int, max_len: int,
                 prefill_tokens: int | None = None): ...


class OwnDecoder:
    """The runtime's own decode loop (continuous refill in ``slots`` rows) on ``runner``."""

    def __init__(self, runner: GraphRunner):
        self.runner = runner

    def decode(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int], eos_id: int, pad_id: int,
               params: SamplingParams | Sequence[SamplingParams], done: np.ndarray | None = None,
               yield_eos: bool = False, slots: int | None = None) -> Iterator[Token]:
        return decode(self.runner, prompts, task_ids, eos_id, pad_id, params, done, yield_eos, slots=slots)

    def score_labels(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
                     label_ids: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
        return score_labels(self.runner, prompts, task_ids, label_ids, pad_id)

    def new_pool(self, eos_id: int, pad_id: int, size: int, max_len: int,
                 prefill_tokens: int | None = None) -> SlotPool:
        return SlotPool(self.runner, eos_id, pad_id, size, max_len, prefill_tokens=prefill_tokens)
