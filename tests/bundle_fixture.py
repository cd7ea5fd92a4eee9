"""Test bundles for the runtime, written by a minimal stand-in for the exporter.

It follows docs/bundle-format.md: one graph for the prompt and every decode step, flat
``past_key_values.{i}.key/.value`` in, ``logits`` + ``present.{i}.key/.value`` out, positions
computed in the graph as ``cumsum(mask) - 1``; manifest.json / tasks.json / tokenizer.json /
validation.json beside the graphs.

The real exporter (``alter_edge.export``, merged from branch ``export``) is what the tests use
by default (``BUILD_BUNDLE`` below); ``ALTER_EDGE_TEST_BUNDLE=fixture`` switches them back to
this stand-in (e.g. while the exporter is broken). The tests only call
``BUILD_BUNDLE(checkpoint_dir, out_dir, task_graphs=...)``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path

FORMAT_VERSION = 1
OPSET = 18


def _wrapper(model, num_layers: int, task_id: int | None):
    import torch
    from torch import nn
    from transformers import DynamicCache

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *rest):
            if task_id is None:  # multi-task graph: task_ids is the third input
                task_ids, past = rest[0], rest[1:]
            else:  # per-task graph: the task is a constant
                task_ids, past = torch.full((input_ids.shape[0],), task_id, dtype=torch.long), rest
            cache = DynamicCache()
            for i in range(num_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
            out = self.model(input_ids, attention_mask, task_ids, past_key_values=cache,
                             position_ids=pos, use_cache=True)
            pkv = out.past_key_values
            flat = []
            for layer in pkv.layers[:num_layers]:
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    return Wrapper()


def _kv_shape(config) -> tuple[int, int, int]:
    n_layers = config.num_hidden_layers
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return n_layers, n_kv, head_dim


def export_graph(ckpt, path: Path, task_id: int | None) -> tuple[list[str], list[str]]:
    """Export one graph (multi-task when ``task_id`` is None); returns (inputs, outputs)."""
    import torch

    L, H, D = _kv_shape(ckpt.model.base.config)
    wrapper = _wrapper(ckpt.model, L, task_id).eval()
    B, T, P = 2, 3, 4
    past = []
    for _ in range(L):
        past += [torch.randn(B, H, P, D), torch.randn(B, H, P, D)]
    multi = task_id is None
    tids = (torch.zeros(B, dtype=torch.long),) if multi else ()
    args = (torch.ones(B, T, dtype=torch.long), torch.ones(B, P + T, dtype=torch.long), *tids, *past)
    kv_names = [f"past_key_values.{i}.{kv}" for i in range(L) for kv in ("key", "value")]
    inputs = ["input_ids", "attention_mask", *(["task_ids"] if multi else []), *kv_names]
    outputs = ["logits"] + [f"present.{i}.{kv}" for i in range(L) for kv in ("key", "value")]
    batch, seq, past_seq = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past_seq")
    total = torch.export.Dim("total")
    rest = ([{0: batch}] if multi else []) + [{0: batch, 2: past_seq}] * (2 * L)
    dyn = ({0: batch, 1: seq}, {0: batch, 1: total}, tuple(rest))  # *rest is one tuple argument
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        prog = torch.onnx.export(wrapper, args, dynamic_shapes=dyn, input_names=inputs,
                                 output_names=outputs, opset_version=OPSET, dynamo=True,
                                 external_data=False, verbose=False)
    prog.save(str(path))
    import onnx

    graph = onnx.load(str(path)).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def build_bundle(checkpoint_dir: Path, out_dir: Path, task_graphs: tuple[str, ...] = (),
                 multi_task: bool = True, max_new_tokens: int = 16, max_prompt_tokens: int = 64) -> Path:
    """A bundle of fp32 graphs: the multi-task ``model.onnx`` and ``tasks/<name>/model.onnx``
    for each name in ``task_graphs`` (the task folded in as a constant)."""
    from alter_edge.io import sha256_file
    from alter_edge.training.checkpoint import checkpoint_hash, load_checkpoint

    ckpt = load_checkpoint(Path(checkpoint_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    graphs = []
    todo = ([("model.onnx", None)] if multi_task else []) + [
        (f"tasks/{name}/model.onnx", name) for name in task_graphs
    ]
    for rel, task in todo:
        tid = None if task is None else ckpt.tasks.id_of(task)
        inputs, outputs = export_graph(ckpt, out / rel, tid)
        graphs.append({"path": rel, "task": task, "precision": "fp32", "sha256": sha256_file(out / rel),
                       "bytes": (out / rel).stat().st_size, "inputs": inputs, "outputs": outputs})
    ckpt.tasks.save(out / "tasks.json")
    shutil.copy(Path(checkpoint_dir) / "tokenizer.json", out / "tokenizer.json")
    (out / "validation.json").write_text(json.dumps({"checks": [], "note": "test fixture"}) + "\n")
    L, H, D = _kv_shape(ckpt.model.base.config)
    manifest = {
        "format": "alter-edge-bundle",
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint_sha256": checkpoint_hash(Path(checkpoint_dir)),
        "base_model": {"reference": ckpt.base_info.reference, "model_type": ckpt.base_info.model_type,
                       "sha256": ckpt.base_info.sha256},
        "opset": OPSET,
        "eos_token_id": ckpt.eos_id,
        "pad_token_id": ckpt.pad_id,
        "kv_cache": {"num_layers": L, "num_kv_heads": H, "head_dim": D,
                     "past_key": "past_key_values.{i}.key", "past_value": "past_key_values.{i}.value",
                     "present_key": "present.{i}.key", "present_value": "present.{i}.value"},
        "generation": {"max_new_tokens": max_new_tokens, "max_prompt_tokens": max_prompt_tokens},
        "graphs": graphs,
        "files": {name: sha256_file(out / name) for name in ("tasks.json", "tokenizer.json", "validation.json")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def build_bundle_with_exporter(checkpoint_dir: Path, out_dir: Path, task_graphs: tuple[str, ...] = ()) -> Path:
    """The real exporter (validated fp32 graphs, generation defaults from the checkpoint)."""
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    export_checkpoint(Path(checkpoint_dir), Path(out_dir),
                      ExportOptions(tasks=",".join(task_graphs) or None, progress=False))
    return Path(out_dir)


BUILD_BUNDLE = build_bundle if os.environ.get("ALTER_EDGE_TEST_BUNDLE") == "fixture" else build_bundle_with_exporter
