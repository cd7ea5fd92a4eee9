"""The decode engines behind ``EdgeModel``: one small protocol, two implementations.

A :class:`Decoder` decodes the rows of one request on one graph, under
:func:`runtime.generate.decode`'s contract: ``(row, token id)`` per generated token, a row
ending at its eos (``(row, None)`` with ``yield_eos``) or its ``max_new_tokens``, or when the
caller sets ``done[row]``. :class:`OwnDecoder` is the runtime's own loop (``runtime.generate``)
on a :class:`~runtime.session.GraphRunner`; ``runtime.genai_engine.GenaiRunner`` is
onnxruntime-genai's generator. Each checks its arguments once, with
:func:`runtime.generate.decode_args`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from .generate import SamplingParams, decode
from .session import GraphRunner

Token = tuple[int, "int | None"]


class Decoder(Protocol):
    def decode(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int], eos_id: int, pad_id: int,
               params: SamplingParams | Sequence[SamplingParams], done: np.ndarray | None = None,
               yield_eos: bool = False, slots: int | None = None) -> Iterator[Token]: ...


class OwnDecoder:
    """The runtime's own decode loop (continuous refill in ``slots`` rows) on ``runner``."""

    def __init__(self, runner: GraphRunner):
        self.runner = runner

    def decode(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int], eos_id: int, pad_id: int,
               params: SamplingParams | Sequence[SamplingParams], done: np.ndarray | None = None,
               yield_eos: bool = False, slots: int | None = None) -> Iterator[Token]:
        return decode(self.runner, prompts, task_ids, eos_id, pad_id, params, done, yield_eos, slots=slots)
