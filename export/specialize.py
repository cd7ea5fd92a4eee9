"""Fold one task into the weights: a per-task model with no ``task_ids`` input.

- ``lora``: ``W += sum_k w_k B_k A_k * scaling`` (``MixedLoRA.delta_weight``; GPT-2 Conv1D
  stores ``W`` as ``[in, out]``, so the delta is transposed), and the wrapper is removed:
  the result is the base architecture, operator for operator, parameter for parameter.
- ``ffn``: experts with weight below ``prune_threshold`` are dropped; the kept ones are
  concatenated into one wider MLP (input projections stacked along their outputs, the
  output projection along its inputs with ``w_k`` folded into its rows, biases summed),
  which equals ``sum_k w_k mlp_k(x)`` and has the base MLP's operators.
- ``bottleneck``: adapters below the threshold are dropped; ``w_k`` folds into the kept
  columns of the up projection.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from alter_edge.errors import ConfigError
from alter_edge.inject import MTAModel
from alter_edge.mta import MixedLoRA, MTABlock, _hidden_size_of, _linear_shape

log = logging.getLogger(__name__)

OUTPUT_PROJECTIONS = ("down_proj", "c_proj", "fc2", "wo")


@dataclass
class FoldReport:
    task: str
    kind: str
    blocks: dict[int, dict] = field(default_factory=dict)  # layer -> what was merged / kept / pruned
    parameters: int = 0
    multitask_parameters: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class FoldedBottleneck(nn.Module):
    """``mlp(x) + U' gelu(D' x + b')`` with the task's mixture folded into ``U'``."""

    def __init__(self, mlp: nn.Module, down: torch.Tensor, down_bias: torch.Tensor, up: torch.Tensor):
        super().__init__()
        self.mlp = mlp
        self.down = nn.Linear(down.shape[1], down.shape[0])
        self.up = nn.Linear(up.shape[1], up.shape[0], bias=False)
        with torch.no_grad():
            self.down.weight.copy_(down)
            self.down.bias.copy_(down_bias)
            self.up.weight.copy_(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H)
        return self.mlp(x) + self.up(torch.nn.functional.gelu(self.down(x)))


def _is_conv1d(layer: nn.Module) -> bool:
    return not isinstance(layer, nn.Linear) and hasattr(layer, "nf")


def _weight_out_in(layer: nn.Module) -> torch.Tensor:
    """The weight as ``(out, in)`` whatever the layer type."""
    return layer.weight.t() if _is_conv1d(layer) else layer.weight


def _new_like(layer: nn.Module, w_out_in: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A layer of ``layer``'s type holding ``w_out_in`` (out, in) and ``bias``."""
    out_f, in_f = w_out_in.shape
    if _is_conv1d(layer):
        new = copy.deepcopy(layer)
        new.weight = nn.Parameter(w_out_in.t().contiguous().clone())
        new.bias = nn.Parameter(bias.clone() if bias is not None else torch.zeros(out_f))
        new.nf = out_f
        if hasattr(new, "nx"):
            new.nx = in_f
        return new
    new = nn.Linear(in_f, out_f, bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(w_out_in)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _fold_lora(block: MTABlock, w: torch.Tensor, layer: nn.Module) -> tuple[nn.Module, dict]:
    """Merge every MixedLoRA of the block (MLP projections and, with ``lora_attention``, the
    attention projections of the same decoder ``layer``) into its base weight."""
    merged = []
    for parent_name, parent in [("", block.mlp), *layer.named_modules()]:
        if parent is block or isinstance(parent, (MixedLoRA, MTABlock)):
            continue
        for name, child in list(parent.named_children()):
            if not isinstance(child, MixedLoRA):
                continue
            base = child.base_layer
            delta = child.delta_weight(w).to(base.weight.dtype)  # (out, in)
            with torch.no_grad():
                base.weight.add_(delta.t() if _is_conv1d(base) else delta)
            setattr(parent, name, base)
            merged.append(f"{parent_name}.{name}" if parent_name else name)
    return block.mlp, {"merged": merged, "mixture": [round(float(x), 6) for x in w]}


def _fold_ffn(block: MTABlock, w: torch.Tensor, threshold: float) -> tuple[nn.Module, dict]:
    kept = [k for k in range(len(w)) if float(w[k]) >= threshold]
    if not kept:  # never drop everything: keep the heaviest expert
        kept = [int(w.argmax())]
    experts = [block.experts[k] for k in kept]
    out = copy.deepcopy(experts[0])
    with torch.no_grad():
        for name, layer in list(experts[0].named_children()):
            if not hasattr(layer, "weight"):
                continue
            layers = [getattr(e, name) for e in experts]
            if name in OUTPUT_PROJECTIONS:  # stack along inputs, fold w_k
                weight = torch.cat([_weight_out_in(lyr) * w[k] for lyr, k in zip(layers, kept, strict=True)], dim=1)
                bias = None
                if layers[0].bias is not None:
                    bias = sum(lyr.bias * w[k] for lyr, k in zip(layers, kept, strict=True))
            else:  # input projections: stack along outputs
                weight = torch.cat([_weight_out_in(lyr) for lyr in layers], dim=0)
                bias = torch.cat([lyr.bias for lyr in layers]) if layers[0].bias is not None else None
            setattr(out, name, _new_like(layers[0], weight, bias))
    pruned = [k for k in range(len(w)) if k not in kept]
    inter = _linear_shape(getattr(out, next(n for n in OUTPUT_PROJECTIONS if hasattr(out, n))))[0]
    return out, {"kept": kept, "pruned": pruned, "mixture": [round(float(x), 6) for x in w],
                 "pruned_weight": round(float(sum(w[k] for k in pruned)), 8), "intermediate_size": inter}


def _fold_bottleneck(block: MTABlock, w: torch.Tensor, threshold: float) -> tuple[nn.Module, dict]:
    K, r = block.K, block.r
    kept = [k for k in range(K) if float(w[k]) >= threshold]
    pruned = [k for k in range(K) if k not in kept]
    info = {"kept": kept, "pruned": pruned, "mixture": [round(float(x), 6) for x in w],
            "pruned_weight": round(float(sum(w[k] for k in pruned)), 8)}
    if not kept:
        return block.mlp, info
    rows = torch.cat([torch.arange(k * r, (k + 1) * r) for k in kept])
    scale = torch.cat([w[k].expand(r) for k in kept])
    with torch.no_grad():
        folded = FoldedBottleneck(block.mlp, block.down[rows], block.down_bias[rows], block.up[:, rows] * scale[None, :])
    assert folded.up.weight.shape[0] == _hidden_size_of(block.mlp)
    return folded, info


def specialize(model: MTAModel, task_id: int, task_name: str = "", prune_threshold: float = 1e-5
               ) -> tuple[nn.Module, FoldReport]:
    """A deep copy of the base causal LM with task ``task_id`` folded in (eval mode, fp32)."""
    if model.cfg.gate != "task":
        raise ConfigError(f"gate {model.cfg.gate!r} mixes adapters per token and cannot be folded into a "
                          "per-task graph; only gate 'task' models can be specialized")
    base = copy.deepcopy(model.base)
    kind = model.cfg.adapter_kind
    report = FoldReport(task=task_name or str(task_id), kind=kind)
    layers = getattr(base.base_model, model.spec.layers)
    for i in model.adapted_layers:
        block = getattr(layers[i], model.spec.mlp)
        if not isinstance(block, MTABlock):
            raise TypeError(f"layer {i} holds {type(block).__name__}, expected an MTA block")
        w = block.mixture.weights_for(task_id).float()  # (K,)
        if kind == "lora":
            new, info = _fold_lora(block, w, layers[i])
        elif kind == "ffn":
            new, info = _fold_ffn(block, w, prune_threshold)
        else:
            new, info = _fold_bottleneck(block, w, prune_threshold)
        setattr(layers[i], model.spec.mlp, new)
        report.blocks[i] = info
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    report.parameters = sum(p.numel() for p in base.parameters())
    report.multitask_parameters = sum(p.numel() for p in model.parameters())
    log.info("task %s (%s): %d parameters after folding", report.task, kind, report.parameters)
    return base, report

