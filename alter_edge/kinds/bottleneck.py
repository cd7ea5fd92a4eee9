"""``bottleneck``: beside the MLP, ``out = mlp(x) + sum_k w_k * U_k gelu(D_k x + b_k)`` with
``U = 0`` at init (D, b, U stacked over the K adapters)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import MS, AdapterKind, GraphPiece, hidden_size_of, to_numpy


class BottleneckKind(AdapterKind):
    name = "bottleneck"

    def build(self, block, mlp, cfg, targets):
        block.mlp = mlp
        hidden = hidden_size_of(mlp)
        K, r = int(cfg.num_adapters), cfg.bottleneck_dim
        block.K, block.r = K, r
        block.down = nn.Parameter(torch.empty(K * r, hidden))  # (K*r, H)
        block.down_bias = nn.Parameter(torch.zeros(K * r))
        block.up = nn.Parameter(torch.zeros(hidden, K * r))  # (H, K*r)
        nn.init.kaiming_uniform_(block.down, a=math.sqrt(5))
        if cfg.init_std > 0:
            nn.init.normal_(block.up, std=cfg.init_std)

    def forward(self, block, x, w):
        h = F.gelu(F.linear(x, block.down, block.down_bias))  # (B, T, K*r)
        h = (h.view(x.shape[0], -1, block.K, block.r) * w[..., None]).flatten(2)
        return block.mlp(x) + F.linear(h, block.up)

    def adapter_parameters(self, block):
        return [block.down, block.down_bias, block.up]

    def graph_piece(self, block, mix, attn_projections, mlp_names):
        return BottleneckPiece(mix, block)


class BottleneckPiece(GraphPiece):
    name = "bottleneck"

    def __init__(self, mix, block):
        super().__init__(mix)
        self.mlp_module = block.mlp
        self.down, self.bias, self.up = to_numpy(block.down), to_numpy(block.down_bias), to_numpy(block.up)
        self.r = block.r

    def mlp(self, g, e, key, x, resid, emit_mlp):
        self.refuse_merged(e)
        base = emit_mlp(self.mlp_module, f"{key}.mlp", x)
        K, r = self.mix.K, self.r
        bits = g.side_bits()
        expand = np.kron(np.eye(K), np.ones((1, r)))
        h = g.linear(x, self.down, key=f"{key}.down", bits=bits)
        h = g.op("BiasGelu", [h, g.const(self.bias, "down_bias")], domain=MS)
        delta = g.linear(g.op("Mul", [h, self.mix.emit(g, e, resid, expand, f"{key}_mix")]), self.up,
                         key=f"{key}.up", bits=bits)
        return g.op("Add", [base, delta])


KIND = BottleneckKind()
