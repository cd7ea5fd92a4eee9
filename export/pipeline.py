"""Checkpoint -> validated bundle: export, validate, specialize, optimize, quantize, write.

Everything is built in a temporary directory that is renamed into place only after every
check passed (``alter_edge.io.atomic_dir``): a failed export leaves no bundle behind.
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from alter_edge.errors import BundleError, CheckpointError, ConfigError
from alter_edge.io import atomic_dir, atomic_write_text
from alter_edge.tasks import TaskRegistry

from .bundle import write_manifest
from .onnx_export import OPSET, KVLayout, export_graph
from .optimize import convert_to_ort, graph_parameters, optimize_graph
from .ortgraph import OrtGraph
from .quantize import (
    INT8_METHODS,
    matmuls_with_weights,
    prepare_for_quantization,
    quantize_int4,
    quantize_int8_blockwise,
    quantize_int8_dynamic,
    sensitivity_ladder,
)
from .specialize import specialize
from .validate import (
    ExportValidationError,
    ValidationReport,
    build_cases,
    build_heldout,
    check_graph_pair,
    check_onnx_vs_torch,
    check_quantized,
    describe_failure,
    load_heldout_rows,
)

log = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    tasks: str | None = "all"  # "all", "a,b", or None: the multi-task graph only
    int8: bool = False
    int4: bool = False
    block_size: int = 32  # weights per scale of the MatMulNBits graphs (int4, blockwise int8)
    int8_method: str = "blockwise"  # blockwise: 8-bit MatMulNBits | dynamic: MatMulInteger
    ort_format: bool = False
    atol: float = 3e-4  # fp32 parity: max |logits diff| at unpadded positions (SmolLM2: ~1.7e-4)
    steps: int = 16  # greedy steps that must match, with the KV cache
    int8_budget: float = 1.0  # max per-task metric drop, points (0-100 scale)
    int4_budget: float = 5.0
    # top-1 agreement with fp32 at every unpadded prompt position (the per-task metric budget
    # is the quality gate; SmolLM2 with random adapters measured 0.896 here)
    min_top1_int8: float = 0.85
    min_top1_int4: float = 0.85
    prune_threshold: float = 1e-5  # ffn/bottleneck adapters below this mixture weight are pruned
    data: Path | None = None  # the checkpoint's training data: its dev split is the held-out slice
    heldout_rows: int = 16  # per task, for the quantized-metric check
    base_model: str | None = None  # override the checkpoint's recorded base model
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.atol > 0:
            raise ConfigError(f"atol must be > 0, got {self.atol}")
        if self.steps < 1:
            raise ConfigError(f"greedy steps must be >= 1, got {self.steps}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block size must be a power of two >= 16, got {self.block_size}")
        if self.int8_method not in INT8_METHODS:
            raise ConfigError(f"int8 method {self.int8_method!r} is not one of {', '.join(INT8_METHODS)}")
        if self.int8_budget < 0 or self.int4_budget < 0:
            raise ConfigError("quantization budgets must be >= 0 points")
        if not 0 <= self.prune_threshold < 1:
            raise ConfigError(f"prune threshold must be in [0, 1), got {self.prune_threshold}")


@dataclass
class _Graph:
    rel: str  # path in the bundle
    task: str | None
    raw: Path  # the raw export (quantization source)
    cases: list
    heldout: list


def export_checkpoint(checkpoint: Path, out: Path, opts: ExportOptions) -> dict:
    """Write a validated bundle for ``checkpoint`` to ``out``; returns the manifest."""
    from alter_edge.training.checkpoint import (
        checkpoint_hash,
        load_checkpoint,
        read_checkpoint_meta,
    )

    out, checkpoint = Path(out), Path(checkpoint)
    if out.exists() and not opts.overwrite:
        raise BundleError(f"{out} already exists; pass `overwrite` to replace it")
    meta = read_checkpoint_meta(checkpoint)  # missing or incomplete: CheckpointError before any torch work
    gate = meta["mta_config"].get("gate", "task")
    if gate != "task" and opts.tasks:
        raise CheckpointError(f"{checkpoint} was trained with gate {gate!r}: its mixture changes per token, so "
                              "it does not fold into per-task graphs; export it with `tasks` none (the "
                              "multi-task graph, which keeps the gate and every adapter)")
    if opts.tasks:  # an unknown task name fails before the model loads
        TaskRegistry.load(checkpoint / "tasks.json").resolve(opts.tasks)
    t_start = time.perf_counter()
    ck = load_checkpoint(checkpoint, base_model=opts.base_model)
    specs = ck.tasks.resolve(opts.tasks) if opts.tasks else []
    tc = ck.train_config
    rows = load_heldout_rows(opts.data, ck.tasks, tc.dev_fraction, tc.split_seed,
                             recorded=ck.state.get("data"))
    inputs = {t: [r.input for r in rows if r.task == t] for t in ck.tasks.names} if rows else None
    cases = build_cases(ck.tokenizer, ck.tasks, ck.eos_id, tc.max_prompt_tokens, inputs)
    heldout = build_heldout(ck.tokenizer, ck.tasks, ck.eos_id, tc.max_prompt_tokens, rows, cases,
                            opts.heldout_rows)
    pad, eos = ck.pad_id, ck.eos_id
    layout = KVLayout.from_config(ck.model.base.config)
    report = ValidationReport(opts.atol, opts.steps)
    info: dict = {"export": {}, "optimization": {}, "specialization": {}, "quantization": {}}
    entries: list[dict] = []

    from tqdm.auto import tqdm

    n_steps = 1 + len(specs) + (1 + len(specs)) * (int(opts.int8) + int(opts.int4)) + int(opts.ort_format)
    bar = tqdm(total=n_steps, desc="export", unit="step", disable=not opts.progress, leave=False)
    with tempfile.TemporaryDirectory(prefix="alter-edge-export-") as work_s, atomic_dir(out, opts.overwrite) as tmp:
        work = Path(work_s)

        # Sessions are opened where a check needs them and dropped after it: an fp32 session of
        # the built-in model holds ~0.6 GB, and keeping one per graph (plus the PyTorch model)
        # took the export of --task all to a 10 GB peak.
        def finish_fp32(g: _Graph) -> None:
            dst = tmp / g.rel
            info["optimization"][g.rel] = optimize_graph(g.raw, dst)
            opt = OrtGraph(dst)
            check_graph_pair("optimized_vs_raw", OrtGraph(g.raw), opt, g.rel, g.cases, pad, report)
            entries.append(_entry(g.rel, g.task, "fp32", opt))

        # 1. the multi-task graph, against PyTorch
        multi = _Graph("model.onnx", None, work / "model.raw.onnx", cases, heldout)
        info["export"][multi.rel] = export_graph(ck.model, multi.raw, True, layout)
        multi_raw = OrtGraph(multi.raw)
        check_onnx_vs_torch(ck.model, multi_raw, multi.rel, cases, pad, report)
        finish_fp32(multi)
        fp32 = [multi]
        bar.update()
        # 2. per-task graphs, against the multi-task graph with that task id
        for spec in specs:
            g = _Graph(f"tasks/{spec.name}/model.onnx", spec.name, work / f"task-{spec.id}.raw.onnx",
                       [c for c in cases if c.name == spec.name], [h for h in heldout if h.task == spec.name])
            model_t, fold = specialize(ck.model, spec.id, spec.name, opts.prune_threshold)
            info["export"][g.rel] = export_graph(model_t, g.raw, False, layout)
            del model_t
            check_graph_pair("task_vs_multitask", multi_raw, OrtGraph(g.raw), g.rel, g.cases, pad, report)
            finish_fp32(g)
            info["specialization"][spec.name] = {**fold.to_dict(), "graph_parameters": graph_parameters(tmp / g.rel),
                                                 "bytes": (tmp / g.rel).stat().st_size}
            fp32.append(g)
            bar.update()
        del multi_raw
        tokenizer = ck.tokenizer
        # the token gate's K x H projections stay fp32 in every quantized graph: tiny, and their
        # outputs are divided by the mixture temperature, which magnifies a quantization error
        gates = [b.gate_weight.detach().float().numpy().T.copy() for b in ck.model.blocks.values()
                 if b.gate_weight is not None]
        ck.model = None  # PyTorch is done: the quantized graphs are checked against fp32 graphs
        gc.collect()
        # 3. quantized graphs, against their fp32 source
        for g in fp32:
            if not (opts.int8 or opts.int4):
                break
            src = OrtGraph(tmp / g.rel)
            prepared = work / (g.raw.stem + ".prep.onnx")
            prep = prepare_for_quantization(g.raw, prepared)
            keep = matmuls_with_weights(prepared, gates) if g.task is None else []
            if gates and g.task is None and len(keep) != len(gates):
                raise ExportValidationError(f"found {len(keep)} of the {len(gates)} gate matmuls in {g.rel}")
            if opts.int8:
                info["quantization"][_suffixed(g.rel, "int8")] = {
                    **prep, **_int8_with_ladder(g, src, prepared, work, tmp, opts, report, tokenizer, pad, eos,
                                                entries, keep)}
                bar.update()
            if opts.int4:
                rel = _suffixed(g.rel, "int4")
                q_raw = work / (g.raw.stem + ".int4.onnx")
                qinfo = quantize_int4(prepared, q_raw, opts.block_size, keep)
                info["optimization"][rel] = optimize_graph(q_raw, tmp / rel)
                q = OrtGraph(tmp / rel)
                report.record(check_quantized(src, q, rel, "int4", g.cases, g.heldout, tokenizer, pad, eos,
                                              opts.int4_budget, opts.min_top1_int4))
                info["quantization"][rel] = {**prep, **qinfo}
                entries.append(_entry(rel, g.task, "int4", q))
                del q
                bar.update()
            del src
            prepared.unlink(missing_ok=True)
        # 4. ORT format for mobile builds
        if opts.ort_format:
            ort_info = convert_to_ort([tmp / e["path"] for e in entries], tmp)
            for e in entries:
                e["ort"] = str(Path(e["path"]).with_suffix(".ort").as_posix())
            info["ort_format"] = ort_info
            bar.update()
        bar.close()
        shutil.copy(checkpoint / "tokenizer.json", tmp / "tokenizer.json")
        shutil.copy(checkpoint / "tasks.json", tmp / "tasks.json")
        info["seconds"] = round(time.perf_counter() - t_start, 1)
        info["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
        import json

        atomic_write_text(tmp / "validation.json", json.dumps({**report.to_dict(), **info}, indent=2) + "\n")
        base = ck.base_info
        meta = {
            "checkpoint_sha256": checkpoint_hash(checkpoint),
            "base_model": {"reference": base.reference, "model_type": base.model_type, "sha256": base.sha256},
            "adapter_kind": ck.mta_config.adapter_kind,
            "opset": OPSET, "eos_token_id": eos, "pad_token_id": pad, "kv_cache": layout.to_dict(),
            "generation": {"max_new_tokens": tc.eval_max_new_tokens, "max_prompt_tokens": tc.max_prompt_tokens},
            "tasks": ck.tasks.names,
        }
        manifest = write_manifest(tmp, meta, entries)
    log.info("bundle written to %s in %.1fs", out, time.perf_counter() - t_start)
    return manifest


def _suffixed(rel: str, precision: str) -> str:
    p = Path(rel)
    return p.with_name(f"{p.stem}.{precision}{p.suffix}").as_posix()


def _entry(rel: str, task: str | None, precision: str, g: OrtGraph) -> dict:
    return {"path": rel, "task": task, "precision": precision, "inputs": g.input_names, "outputs": g.output_names}


def _feeds(src: OrtGraph, cases: list, pad: int) -> list[dict]:
    """Prompt-step inputs of the validation cases, in ``src``'s input names."""
    from .ortgraph import left_pad_np

    feeds = []
    for case in cases:
        ids, mask = left_pad_np(case.prompts, pad)
        feed = {"input_ids": ids, "attention_mask": mask}
        if src.multitask:
            feed["task_ids"] = np.asarray(case.task_ids, np.int64)
        feed.update(zip(src.past_names, src.empty_past(ids.shape[0]), strict=True))
        feeds.append(feed)
    return feeds


def _int8_with_ladder(g: _Graph, src: OrtGraph, prepared: Path, work: Path, tmp: Path, opts: ExportOptions,
                      report: ValidationReport, tokenizer, pad: int, eos: int, entries: list[dict],
                      keep: list[str]) -> dict:
    """Quantize; over budget, retry keeping the most sensitive matmuls in fp32 (see
    ``quantize.sensitivity_ladder``); fail when no rung meets the budget. ``keep``: matmuls that
    stay fp32 in every rung."""
    rel = _suffixed(g.rel, "int8")
    attempts = []
    for rung, rung_exclude in sensitivity_ladder(prepared, _feeds(src, g.cases, pad)):
        exclude = sorted(set(rung_exclude) | set(keep))
        q_raw = work / (g.raw.stem + ".int8.onnx")
        qinfo = (quantize_int8_blockwise(prepared, q_raw, exclude, opts.block_size)
                 if opts.int8_method == "blockwise" else quantize_int8_dynamic(prepared, q_raw, exclude))
        opt_info = optimize_graph(q_raw, tmp / rel)
        q = OrtGraph(tmp / rel)
        rec = check_quantized(src, q, rel, "int8", g.cases, g.heldout, tokenizer, pad, eos,
                              opts.int8_budget, opts.min_top1_int8)
        rec["fp32_rung"] = rung
        report.record(rec, fatal=False)
        attempts.append(rung)
        if rec["passed"]:
            entries.append(_entry(rel, g.task, "int8", q))
            return {**qinfo, "fp32_rung": rung, "attempts": attempts, "optimization": opt_info}
    (tmp / rel).unlink(missing_ok=True)
    raise ExportValidationError(describe_failure(report.checks[-1]) +
                                f" (after keeping in fp32: {', '.join(attempts)})")
