"""``ffn`` (the paper's): the block's MLP is replaced by K copies of it ("upcycled" experts);
``out = sum_k w_k * mlp_k(x)``. Equal copies with weights summing to 1 start as the base MLP
exactly. A task's graph keeps only the experts its mixture weighs above the prune threshold."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .base import AdapterKind, GraphPiece


class FfnKind(AdapterKind):
    name = "ffn"

    def build(self, block, mlp, cfg, targets):
        block.experts = nn.ModuleList([copy.deepcopy(mlp) for _ in range(int(cfg.num_adapters))])
        if cfg.init_std > 0:
            with torch.no_grad():
                for e in block.experts:
                    for p in e.parameters():
                        p.add_(torch.randn_like(p) * cfg.init_std)

    def forward(self, block, x, w):
        out = None
        for k, expert in enumerate(block.experts):
            y = expert(x) * w[..., k, None]
            out = y if out is None else out + y
        return out

    def adapter_parameters(self, block):
        return list(block.experts.parameters())

    def graph_piece(self, block, mix, attn_projections, mlp_names):
        return FfnPiece(mix, list(block.experts))


class FfnPiece(GraphPiece):
    """``sum_k w_k mlp_k(x)``; one task: the experts below the prune threshold left out."""

    name = "ffn"

    def __init__(self, mix, experts):
        super().__init__(mix)
        self.experts = experts

    def mlp(self, g, e, key, x, resid, emit_mlp):
        self.refuse_merged(e)
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


KIND = FfnKind()
