"""What the graph pieces of every adapter kind share: the block's mixture as the graph sees it
(``MixtureSource``), what a graph is built for (``Emit``: ``multitask``, each row's mixture
gathered by ``task_ids``; ``task``, the mixture a constant; ``merged``, the adapters folded into
the base weights) and the one gather of every block's mixture (``emit_mixtures``). Each kind's
own piece (its torch forward beside it) is in its module of ``alter_edge.kinds``; tests check the
built graph against the torch forward.

Per-task graphs keep the adapter tensors every task shares (stored once in the bundle's weight
file) and carry only their task's mixture as a constant; ffn experts below the prune threshold
are left out of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from alter_edge.kinds.base import to_numpy

from .graph import GraphBuilder

MODES = ("multitask", "task", "merged")


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@dataclass
class Emit:
    """What a block is emitted for: ``mode`` and, for ``task``/``merged``, the task id."""

    mode: str
    task_id: int | None
    task_ids: str | None  # the graph's task_ids input (multitask)
    prune_threshold: float = 1e-5
    token_weights: dict = field(default_factory=dict)  # token gate: each block's (B, S, K), made once
    mixtures: list = field(default_factory=list)  # multitask: (output name, (T, 1, W) table) per use


def emit_mixtures(g: GraphBuilder, e: Emit) -> None:
    """Every side path's mixture in one ``Gather`` by ``task_ids`` and one ``Split``: the tables
    of all blocks side by side, ``[T, 1, sum W]``, gathered once a step. The two nodes read only
    a constant and the graph input, so they go first in the graph."""
    if not e.mixtures:
        return
    names, tables = zip(*e.mixtures, strict=True)
    table = g.const(np.concatenate(tables, axis=-1), "mix_tables")
    rows = g.fresh("mix_rows")
    widths = g.const(np.array([t.shape[-1] for t in tables], np.int64), "mix_widths")
    n = len(g.nodes)
    g.op("Gather", [table, e.task_ids], outputs=[rows], axis=0)
    if len(names) == 1:
        g.op("Identity", [rows], outputs=list(names))
    else:
        g.op("Split", [rows, widths], outputs=list(names), axis=-1)
    g.nodes[:] = g.nodes[n:] + g.nodes[:n]
    e.mixtures.clear()


class MixtureSource:
    """The block's mixture table and (token gate) its gate, as numpy."""

    def __init__(self, block):
        self.temperature = float(block.mixture.temperature)
        self.scale = float(block.mixture.scale)  # the mixture's output scale (1: none)
        self.logits = to_numpy(block.mixture.task_logits())  # (T, K): each task's row (its own or its group's)
        self.gate = None if block.gate_weight is None else to_numpy(block.gate_weight)  # (K, H)
        self.K = self.logits.shape[1]

    def weights(self, task_id: int) -> np.ndarray:
        return softmax(self.logits[task_id] / self.temperature) * self.scale  # (K,)

    def table(self) -> np.ndarray:
        return softmax(self.logits / self.temperature, -1) * self.scale  # (T, K)

    def emit(self, g: GraphBuilder, e: Emit, resid: str, expand: np.ndarray, hint: str) -> str:
        """Mixture weights multiplied into a side path's width: ``m @ expand`` with ``expand``
        (K, W) (repeat over rank, scaling, tiling over stacked projections). One task: a
        constant ``[W]``. Multitask:
        ``[B, 1, W]`` per row (a name :func:`emit_mixtures` gives a value); token gate: ``[B, S, W]``
        from the hidden state ``resid``."""
        if e.mode != "multitask":  # one task: its mixture as a constant, A and B stay shared
            return g.const((self.weights(e.task_id) @ expand).astype(np.float32), hint)
        if self.gate is None:  # gathered with every other block's by emit_mixtures
            name = g.fresh(hint)
            e.mixtures.append((name, (self.table() @ expand).astype(np.float32)[:, None, :]))  # (T, 1, W)
            return name
        w = e.token_weights.get(id(self))
        if w is None:  # once per block: every adapted projection of it shares the weights
            H = self.gate.shape[1]
            ones = g.const(np.ones(H, np.float32), "ones")
            hn = g.op("SimplifiedLayerNormalization", [resid, ones], epsilon=1e-6, axis=-1)
            z = g.linear(hn, self.gate / math.sqrt(H), bits=0)  # (B, S, K), gate kept fp32
            lg = g.op("Gather", [g.const(self.logits[:, None, :].astype(np.float32), "mix_logits"), e.task_ids],
                      axis=0)
            w = e.token_weights[id(self)] = g.op("Softmax", [g.op("Div", [
                g.op("Add", [z, lg]), g.const(np.float32(self.temperature), "temp")])], axis=-1)
        return g.op("MatMul", [w, g.const((expand * self.scale).astype(np.float32), hint + "_expand")])


def adapter_for(block, attn_projections: dict[str, object], mlp_names: tuple[str, ...]):
    """The graph piece of one MTA block (``alter_edge.mta.MTABlock``): its kind's
    (``alter_edge.kinds``), reading the block's mixture. ``attn_projections``: the block's attention
    projections by their names among the block's projections; ``mlp_names``: its MLP's."""
    return block.impl.graph_piece(block, MixtureSource(block), attn_projections, mlp_names)
