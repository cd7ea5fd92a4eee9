"""``lora``: each target projection gets K low-rank deltas, ``y = W x + s * sum_k w_k B_k A_k x``
with ``B = 0`` at init. The K factors are stacked (A ``(K*r, in)``, B ``(out, K*r)``), so it is
one matmul pair per projection. Mergeable per task: ``W + s * B diag(repeat(w, r)) A``."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterKind, GraphPiece, linear_shape, to_numpy


def merged_weight(w: np.ndarray, A: np.ndarray, B: np.ndarray, mixture: np.ndarray, rank: int,
                  scaling: float) -> np.ndarray:
    """The one LoRA merge: ``w (out, in) + (B * repeat(mixture, rank) * scaling) @ A`` for stacked
    factors A ``(K*r, in)``, B ``(out, K*r)`` and one task's mixture ``(K,)``."""
    m = np.repeat(mixture, rank) * scaling
    return w + (B * m[None, :]) @ A


class MixedLoRA(nn.Module):
    """K stacked LoRA factors on one projection, mixed by its block's per-task weights."""

    def __init__(self, base_layer: nn.Module, num_adapters: int, rank: int, alpha: float, init_std: float,
                 block: nn.Module, a_rows: int | None = None):
        super().__init__()
        self.base_layer = base_layer
        object.__setattr__(self, "_block", block)  # the owner of the mixture; not a submodule
        in_f, out_f = linear_shape(base_layer)
        self.num_adapters, self.rank, self.scaling = num_adapters, rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(num_adapters * rank if a_rows is None else a_rows, in_f))
        self.lora_B = nn.Parameter(torch.zeros(out_f, num_adapters * rank))  # (out, K*r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if init_std > 0:
            nn.init.normal_(self.lora_B, std=init_std)

    def mixed_input(self, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        """``w_k * A_k x`` side by side: (B, T, K*r)."""
        h = F.linear(x, self.lora_A)  # (B, T, K*r)
        return (h.view(x.shape[0], -1, self.num_adapters, self.rank) * mix[..., None]).flatten(2)

    def stacked_A(self) -> torch.Tensor:
        """A as K stacked factors ``(K*r, in)``."""
        return self.lora_A

    @property
    def weight(self) -> torch.Tensor:
        """The base projection's weight (T5's FFN reads ``wo.weight.dtype`` before ``wo``)."""
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in)
        y = self.base_layer(x)
        return y + F.linear(self.mixed_input(x, self._block.weights()), self.lora_B) * self.scaling


class LoraKind(AdapterKind):
    name = "lora"
    layer_class = MixedLoRA

    def build(self, block, mlp, cfg, targets):
        block.mlp = mlp
        block.lora_layers = []
        for parent, name in targets:
            base = getattr(parent, name, None)
            if base is None:
                raise ValueError(f"{type(parent).__name__} has no projection {name!r}")
            wrapped = self.layer_class(base, int(cfg.num_adapters), cfg.lora_rank, cfg.lora_alpha, cfg.init_std,
                                       block)
            setattr(parent, name, wrapped)
            block.lora_layers.append(wrapped)

    def forward(self, block, x, w):
        return block.mlp(x)  # its projections are MixedLoRA layers

    def adapter_parameters(self, block):
        return [p for lyr in block.lora_layers for p in (lyr.lora_A, lyr.lora_B)]

    def graph_piece(self, block, mix, attn_projections, mlp_names):
        projections = dict(attn_projections)
        projections.update({n: getattr(block.mlp, n) for n in mlp_names if hasattr(block.mlp, n)})
        return LoraPiece(mix, block.mlp, projections)


class LoraPiece(GraphPiece):
    """``y = W x + s * B diag(m) A x`` on each adapted projection. Projections sharing an input
    (q/k/v, gate/up) stack their A factors into one matmul and put their B factors
    block-diagonally into another. ``merged``: the deltas folded into the base weights."""

    name = "lora"

    def __init__(self, mix, mlp_module, projections: dict[str, nn.Module]):
        super().__init__(mix)
        self.mlp_module = mlp_module
        self.lora = {}  # projection name -> (A (K*r, in), B (out, K*r), rank, scaling)
        for pname, layer in projections.items():
            if hasattr(layer, "lora_A"):
                self.lora[pname] = (to_numpy(layer.stacked_A()), to_numpy(layer.lora_B), layer.rank, layer.scaling)
        self.r = next(iter(self.lora.values()))[2] if self.lora else 1

    def adapted(self, names: tuple[str, ...]) -> list[str]:
        return [n for n in names if n in self.lora]

    def merged(self, names: tuple[str, ...], w: np.ndarray, outs: tuple[int, ...], task_id: int) -> np.ndarray:
        """The stacked base rows ``w`` of ``names`` with one task's deltas merged in."""
        if not self.adapted(names):
            return w
        parts, row = [], 0
        for n, width in zip(names, outs, strict=True):
            wn = w[row:row + width]
            if n in self.lora:
                A, B, r, s = self.lora[n]
                wn = merged_weight(wn, A, B, self.mix.weights(task_id), r, s)
            parts.append(wn)
            row += width
        return parts[0] if len(parts) == 1 else np.concatenate(parts, 0)

    def project(self, g, e, key, names, w, outs, x, resid, bias=None, base_key=None):
        """The group's projection ``x @ w.T`` (``w``: the stacked base rows of ``names``, widths
        ``outs``) plus the adapters' delta ``B (m * A x)``. When B has the graph's own bits (the
        default, int4 included) and the base's input width is whole quantization blocks, one
        matmul computes both:
        ``concat(x, m * A x) @ [w | B].T`` (B's columns are blocks of their own, so it quantizes
        exactly as apart); otherwise (B at other bits than the base, e.g. ``adapter_bits=8`` in an
        int4 graph) base and delta run apart and add. Merged: the merged weights, inline."""
        if e.mode == "merged":
            return g.linear(x, self.merged(names, w, outs, e.task_id), key=None, bias=bias)
        members = self.adapted(names)
        if not members:
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
        bits = g.side_bits()
        h = g.linear(x, A, key=f"{key}.lora_A", bits=bits)
        hm = g.op("Mul", [h, self.mix.emit(g, e, resid, expand, f"{key}_mix")])
        if bits == g.bits and w.shape[1] % g.block_size == 0:
            z = g.op("Concat", [x, hm], axis=-1)
            return g.linear(z, np.concatenate([w, Bm], axis=1), key=f"{key}.wb", bias=bias)
        y = g.linear(x, w, key=base_key, bias=bias)
        return g.op("Add", [y, g.linear(hm, Bm, key=f"{key}.lora_B", bits=bits)])

    def mlp(self, g, e, key, x, resid, emit_mlp):
        def project(k, names, w, widths, xx, base_key, bias=None):
            return self.project(g, e, k, names, w, widths, xx, resid, bias, base_key=base_key)

        return emit_mlp(self.mlp_module, f"{key}.mlp", x, project)


KIND = LoraKind()
