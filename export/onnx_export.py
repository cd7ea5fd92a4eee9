"""Export an MTA model (or a task-folded copy of it) to one ONNX graph with the KV cache.

One graph serves the prompt step (``past_seq = 0``) and every decode step. Positions are
computed inside the graph from the attention mask (``cumsum(mask) - 1``), so left padding
works without a ``position_ids`` input. Names follow docs/bundle-format.md.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alter_edge.base_model import kv_cache_kwarg, kv_cache_out

log = logging.getLogger(__name__)

# Opset 18 is what torch 2.13's dynamo exporter emits natively (no version conversion
# pass) and what onnxruntime 1.32's quantizers and ORT-format converter all accept.
OPSET = 18


@dataclass(frozen=True)
class KVLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config) -> KVLayout:
        n_layers = getattr(config, "num_hidden_layers", None) or config.n_layer
        n_heads = getattr(config, "num_attention_heads", None) or config.n_head
        n_kv = getattr(config, "num_key_value_heads", None) or n_heads
        hidden = getattr(config, "hidden_size", None) or config.n_embd
        head_dim = getattr(config, "head_dim", None) or hidden // n_heads
        return cls(int(n_layers), int(n_kv), int(head_dim))

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    def to_dict(self) -> dict:
        return {
            "num_layers": self.num_layers, "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
            "past_key": "past_key_values.{i}.key", "past_value": "past_key_values.{i}.value",
            "present_key": "present.{i}.key", "present_value": "present.{i}.value",
            "dtype": "float32", "shape": ["batch", "num_kv_heads", "past_seq", "head_dim"],
        }


def input_names(layout: KVLayout, multitask: bool) -> list[str]:
    return ["input_ids", "attention_mask"] + (["task_ids"] if multitask else []) + layout.past_names()


def output_names(layout: KVLayout) -> list[str]:
    return ["logits"] + layout.present_names()


class GraphWrapper(nn.Module):
    """Flat tensors in, flat tensors out, around an MTAModel (``multitask``) or a plain causal
    LM (a per-task graph: the task is folded into its weights)."""

    def __init__(self, model: nn.Module, layout: KVLayout, multitask: bool):
        super().__init__()
        self.model = model
        self.layout = layout
        self.multitask = multitask
        self.config = model.base.config if multitask else model.config

    def forward(self, input_ids, attention_mask, task_ids, past: list[torch.Tensor]):
        from transformers import DynamicCache

        past_len = past[0].shape[2]
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_len:]  # (B, T)
        cache = DynamicCache(config=self.config)
        for i in range(self.layout.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        kwargs = {"attention_mask": attention_mask, kv_cache_kwarg(self.model): cache, "position_ids": pos,
                  "use_cache": True}
        if self.multitask:
            out = self.model(input_ids, task_ids=task_ids, **kwargs)
        else:
            out = self.model(input_ids=input_ids, **kwargs)
        present = []
        for i in range(self.layout.num_layers):
            layer = kv_cache_out(out).layers[i]
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def sample_inputs(layout: KVLayout, multitask: bool, batch: int = 2, seq: int = 3, past: int = 4):
    """Example inputs for tracing: sizes >= 2 so no axis is specialised to 0 or 1."""
    ids = torch.randint(0, 8, (batch, seq), dtype=torch.long)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    mask[0, :2] = 0  # a left-padded row
    tids = torch.zeros(batch, dtype=torch.long)
    kv = [torch.randn(batch, layout.num_kv_heads, past, layout.head_dim) for _ in range(2 * layout.num_layers)]
    return ids, mask, tids, kv


def export_graph(model: nn.Module, path: Path, multitask: bool, layout: KVLayout | None = None) -> dict:
    """Export ``model`` (an MTAModel when ``multitask``, else a causal LM) to ``path``.

    Returns facts about the export (seconds, opset, names)."""
    from torch.export import Dim

    # torch warns once per missing torchvision kernel on every export: not our concern
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

    config = model.base.config if multitask else model.config
    layout = layout or KVLayout.from_config(config)
    wrapper = GraphWrapper(model, layout, multitask).eval()
    ids, mask, tids, kv = sample_inputs(layout, multitask)
    batch, seq, total, past = Dim("batch"), Dim("seq"), Dim("total"), Dim("past_seq")
    kv_shape = {0: batch, 2: past}
    dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total},
           "task_ids": {0: batch} if multitask else None, "past": [kv_shape] * len(kv)}
    args = (ids, mask, tids if multitask else None, kv)
    t0 = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            wrapper, args, dynamic_shapes=dyn, dynamo=True, opset_version=OPSET,
            input_names=input_names(layout, multitask), output_names=output_names(layout),
            optimize=True, verbose=False,
        )
        prog.save(str(path), external_data=False)
    seconds = time.perf_counter() - t0
    log.info("exported %s in %.1fs", path.name, seconds)
    return {"path": str(path), "seconds": round(seconds, 2), "opset": OPSET,
            "inputs": input_names(layout, multitask), "outputs": output_names(layout)}
