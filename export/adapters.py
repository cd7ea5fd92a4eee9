"""The graph piece of each adapter kind: one class per kind, owning how its block is emitted
into a built graph for every task (``multitask``: each row's mixture gathered by ``task_ids``),
folded for one task (``task``: the mixture is a constant), or merged into the base weights
(``merged``, lora only). The PyTorch forward of each kind is in
``alter_edge.mta``; the algebra here is the same, and tests check the built graph against it.

Per-task graphs keep the adapter tensors every task shares (stored once in the bundle's weight
file) and carry only their task's mixture as a constant; ffn experts below the prune threshold
are left out of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .graph import MS, GraphBuilder

MODES = ("multitask", "task", "merged")


def adapter_bits(graph_bits: int, override: int | None = None) -> int:
    """Bits of the low-rank adapter factors (lora A/B, bottleneck down/up): the graph's own by
    default (so lora's B joins the base projection's ``MatMulNBits``), ``override`` (8 or 4) in a
    quantized graph when asked; 0 (fp32) in an fp32 graph."""
    if not graph_bits:
        return 0
    return graph_bits if override is None else override


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


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
        self.logits = _np(block.mixture.logits)  # (T, K)
        self.gate = None if block.gate_weight is None else _np(block.gate_weight)  # (K, H)
        self.K = self.logits.shape[1]

    def weights(self, task_id: int) -> np.ndarray:
        return softmax(self.logits[task_id] / self.temperature)  # (K,)

    def table(self) -> np.ndarray:
        return softmax(self.logits / self.temperature, -1)  # (T, K)

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
        return g.op("MatMul", [w, g.const(expand.astype(np.float32), hint + "_expand")])


class LoraKind:
    """``y = W x + s * B diag(m) A x`` on each adapted projection (``MixedLoRA``). Projections
    sharing an input (q/k/v, gate/up) stack their A factors into one matmul and put their B
    factors block-diagonally into another."""

    name = "lora"

    def __init__(self, block, projections: dict[str, object]):
        self.mix = MixtureSource(block)
        self.lora = {}  # projection name -> (A (K*r, in), B (out, K*r), rank, scaling)
        for pname, layer in projections.items():
            if hasattr(layer, "lora_A"):
                self.lora[pname] = (_np(layer.lora_A), _np(layer.lora_B), layer.rank, layer.scaling)
        self.r = next(iter(self.lora.values()))[2] if self.lora else 1

    def adapted(self, names: tuple[str, ...]) -> list[str]:
        return [n for n in names if n in self.lora]

    def merged_weight(self, pname: str, w: np.ndarray, task_id: int) -> np.ndarray:
        A, B, r, s = self.lora[pname]
        m = np.repeat(self.mix.weights(task_id), r) * s
        return w + (B * m[None, :]) @ A

    def project(self, g: GraphBuilder, e: Emit, key: str, names: tuple[str, ...], w: np.ndarray,
                outs: tuple[int, ...], x: str, resid: str, bias: np.ndarray | None = None,
                base_key: str | None = None) -> str:
        """The group's projection ``x @ w.T`` (``w``: the stacked base rows of ``names``, widths
        ``outs``) plus the adapters' delta ``B (m * A x)``. When B has the graph's own bits (the
        default, int4 included) and the base's input width is whole quantization blocks, one
        matmul computes both:
        ``concat(x, m * A x) @ [w | B].T`` (B's columns are blocks of their own, so it quantizes
        exactly as apart); otherwise (B at other bits than the base, e.g. ``adapter_bits=8`` in an
        int4 graph) base and delta run apart and add."""
        members = self.adapted(names)
        if not members or e.mode == "merged":
            return g.linear(x, w, key=base_key, bias=bias)
        K, r = self.mix.K, self.r
        A = np.concatenate([self.lora[n][0] for n in members], axis=0)  # (n*K*r, in)
        Bm = np.zeros((sum(outs), len(members) * K * r), np.float32)
        row = 0
        for n, width in zip(names, outs, strict=True):
            if n in self.lora:
                j = members.index(n)
                Bm[row:row + width, j * K * r:(j + 1) * K * r] = self.lora[n][1] * self.lora[n][3]
            row += width
        # expand: mixture (K,) -> the stacked width (n*K*r,): repeat each weight r times, tile n times
        expand = np.tile(np.kron(np.eye(K), np.ones((1, r))), (1, len(members)))  # (K, n*K*r)
        bits = adapter_bits(g.bits, g.adapter_bits)
        h = g.linear(x, A, key=f"{key}.lora_A", bits=bits)
        hm = g.op("Mul", [h, self.mix.emit(g, e, resid, expand, f"{key}_mix")])
        if bits == g.bits and w.shape[1] % g.block_size == 0:
            z = g.op("Concat", [x, hm], axis=-1)
            return g.linear(z, np.concatenate([w, Bm], axis=1), key=f"{key}.wb", bias=bias)
        y = g.linear(x, w, key=base_key, bias=bias)
        return g.op("Add", [y, g.linear(hm, Bm, key=f"{key}.lora_B", bits=bits)])


class FfnKind:
    """The block's MLP replaced by K experts (the paper's upcycled FFNs): ``sum_k w_k mlp_k(x)``."""

    name = "ffn"

    def __init__(self, block):
        self.mix = MixtureSource(block)
        self.experts = [expert for expert in block.experts]

    def mlp(self, g: GraphBuilder, e: Emit, key: str, x: str, resid: str, emit_mlp) -> str:
        K = self.mix.K
        if e.mode == "multitask":
            kept = list(range(K))
        else:
            w = self.mix.weights(e.task_id)
            kept = [k for k in range(K) if w[k] >= e.prune_threshold]
        out = None
        for k in kept:
            y = emit_mlp(self.experts[k], f"{key}.expert{k}", x)
            if e.mode == "multitask":
                wk = self.mix.emit(g, e, resid, np.eye(K)[:, k:k + 1], f"{key}_w{k}")  # (B, 1|S, 1)
            else:
                wk = g.const(np.float32(self.mix.weights(e.task_id)[k]), f"{key}_w{k}")
            y = g.op("Mul", [y, wk])
            out = y if out is None else g.op("Add", [out, y])
        return out


class BottleneckKind:
    """``mlp(x) + sum_k w_k U_k gelu(D_k x + b_k)`` beside the block's MLP."""

    name = "bottleneck"

    def __init__(self, block):
        self.mix = MixtureSource(block)
        self.mlp_module = block.mlp
        self.down, self.bias, self.up = _np(block.down), _np(block.down_bias), _np(block.up)
        self.r = block.r

    def mlp(self, g: GraphBuilder, e: Emit, key: str, x: str, resid: str, emit_mlp) -> str:
        base = emit_mlp(self.mlp_module, f"{key}.mlp", x)
        K, r = self.mix.K, self.r
        bits = adapter_bits(g.bits, g.adapter_bits)
        expand = np.kron(np.eye(K), np.ones((1, r)))
        h = g.linear(x, self.down, key=f"{key}.down", bits=bits)
        h = g.op("BiasGelu", [h, g.const(self.bias, "down_bias")], domain=MS)
        delta = g.linear(g.op("Mul", [h, self.mix.emit(g, e, resid, expand, f"{key}_mix")]), self.up,
                         key=f"{key}.up", bits=bits)
        return g.op("Add", [base, delta])


def adapter_for(block, projections: dict[str, object]):
    """The graph piece for one MTA block (``alter_edge.mta.MTABlock``)."""
    kinds = {"lora": lambda: LoraKind(block, projections), "ffn": lambda: FfnKind(block),
             "bottleneck": lambda: BottleneckKind(block)}
    return kinds[block.kind]()
