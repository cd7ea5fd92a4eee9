"""``hydra``: a shared A with K B heads on each target projection (HydraLoRA, arXiv 2404.19245;
MTL-LoRA, 2410.09437): ``y = W x + s * sum_k w_k B_k (A x)``, A ``(r, in)`` shared by every task,
B ``(out, K*r)``: K heads of rank r.

At rank r it trains ``r * (in + K * out)`` numbers a projection where K stacked LoRAs train
``K * r * (in + out)``: ``matched_rank`` picks the r that matches one shared LoRA's count.
The B heads start at zero (the model starts as the base) and diverge from the first step:
head k's gradient is ``w_k`` times the shared one, and each task's mixture leans on its own head
(the ``own_shared`` prior), so each head is pulled mostly by its own task's rows.

Folded per task, it is a LoRA whose K factors all read the same A: the graph and the merge are
``lora``'s, with A repeated K times."""

from __future__ import annotations

import torch

from .lora import LoraKind, MixedLoRA


class SharedALoRA(MixedLoRA):
    """One A ``(r, in)`` read by K B heads ``(out, K*r)``, mixed by the block's per-task weights."""

    def __init__(self, base_layer, num_adapters, rank, alpha, init_std, block):
        super().__init__(base_layer, num_adapters, rank, alpha, init_std, block, a_rows=rank)

    def mixed_input(self, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.linear(x, self.lora_A)  # (B, T, r)
        return (h[..., None, :] * mix[..., None]).flatten(2)  # (B, T, K*r)

    def stacked_A(self) -> torch.Tensor:
        return self.lora_A.repeat(self.num_adapters, 1)  # (K*r, in)


class HydraKind(LoraKind):
    name = "hydra"
    layer_class = SharedALoRA


def matched_rank(shapes: list[tuple[int, int]], lora_rank: int, num_adapters: int) -> int:
    """The largest hydra rank whose trainable count over the projections ``shapes`` ((in, out)
    pairs) is at most one shared LoRA's of rank ``lora_rank`` (at least 1)."""
    lora = lora_rank * sum(i + o for i, o in shapes)
    per_rank = sum(i + num_adapters * o for i, o in shapes)
    return max(1, lora // per_rank)


KIND = HydraKind()
