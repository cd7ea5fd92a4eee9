"""An encoder-decoder (T5) checkpoint -> validated bundle: ``export.pipeline.export_checkpoint``
hands a T5 checkpoint here after its request checks.

Per precision and task an encoder graph and a decoder graph (``export.seq2seq``), all the
graphs of a precision reading one weight file (``weights.<precision>.bin``), as decoder bundles
do. The checks are ``export.seq2seq_check``'s; everything goes to a temporary folder renamed
into place only when every check passed. No ``genai_config.json`` is written (whether
onnxruntime-genai runs the pair is open). int4 rounds to nearest (``rtn``): the GPTQ
calibration and the mixed-precision groups are the decoder builder's.
"""
from __future__ import annotations

import gc
import logging
import tempfile
import time
from pathlib import Path

from alter_edge.io import atomic_dir
from alter_edge.runtime.contract import DECODER_ROLE, ENCODER_ROLE, SEQ2SEQ_CONTRACT
from alter_edge.runtime.seq2seq import Seq2SeqRunner
from alter_edge.runtime.session import session_options

from .builder import BuildSpec
from .bundle import bundle_files, write_manifest
from .graph import OPSET, WeightFile
from .options import ExportOptions, confined
from .quant import QuantPlan
from .report import ExportValidationError, ValidationReport, describe_failure
from .seq2seq import Seq2SeqBuilder
from .seq2seq_check import check_pair, check_quantized_pair, pair_outputs, torch_pair_reference
from .validate import validation_inputs

log = logging.getLogger(__name__)
ROLES = (ENCODER_ROLE, DECODER_ROLE)
ARCHITECTURE = "encoder-decoder"
__all__ = ["ARCHITECTURE", "export_seq2seq", "pair_path"]


def pair_path(task: str | None, precision: str, role: str, mode: str = "multitask") -> str:
    """Where one graph of a pair sits in the bundle: ``model.<role>.<precision>.onnx`` (the
    multi-task pair), ``task-<name>.<role>.<precision>.onnx`` or, adapters merged into the
    weights, ``task-<name>.merged.<role>.<precision>.onnx``."""
    if task is None:
        return f"model.{role}.{precision}.onnx"
    return f"task-{task}{'.merged' if mode == 'merged' else ''}.{role}.{precision}.onnx"


def export_seq2seq(ck, checkpoint: Path, out: Path, opts: ExportOptions, plan: list[BuildSpec],
                   names: dict[int, str], t_start: float) -> dict:
    """Write a validated encoder-decoder bundle for the loaded checkpoint ``ck``; returns the manifest."""
    for precision in {"fp32", *opts.precisions}:  # every file name, before anything is written
        for spec in plan:
            for role in ROLES:
                confined(out, pair_path(names.get(spec.task_id), precision, role, spec.mode))
    ex = _Seq2SeqExport(ck, opts, names)
    try:
        with tempfile.TemporaryDirectory(prefix="alter-edge-export-") as work, atomic_dir(out, opts.overwrite) as tmp:
            ship_fp32 = "fp32" in opts.precisions
            ref = {c.name: torch_pair_reference(ck.model, c, ex.pad, opts.steps) for c in ex.cases}
            fp32 = ex.build_all("fp32", tmp if ship_fp32 else Path(work), plan if ship_fp32 else plan[:1], ship_fp32)
            quantized = {p: ex.build_all(p, tmp, plan, True) for p in opts.precisions if p != "fp32"}
            ck.model = ex.builder = None  # only onnxruntime from here
            gc.collect()
            src = ex.check_fp32(fp32, ref)
            entries = [e for s, paths in fp32 for e in _entries(s, paths, "fp32", names)] if ship_fp32 else []
            entries += ex.check_quantized(quantized, src)
            manifest = ex.write_files(checkpoint, tmp, entries, t_start)
    finally:
        ex.close()
    log.info("encoder-decoder bundle written to %s in %.1fs", out, time.perf_counter() - t_start)
    return manifest


def _entries(spec: BuildSpec, paths: dict[str, Path], precision: str, names: dict) -> list[dict]:
    return [{"path": paths[role].name, "task": names.get(spec.task_id), "precision": precision, "mode": spec.mode,
             "role": role, "external_data": [] if spec.mode == "merged" else [f"weights.{precision}.bin"]}
            for role in ROLES]


class _Seq2SeqExport:
    """One T5 export's state: the builder, the validation cases and held-out rows, the report."""

    def __init__(self, ck, opts: ExportOptions, names: dict[int, str]):
        self.ck, self.opts, self.names = ck, opts, names
        self.builder = Seq2SeqBuilder(ck.model)
        self.layout = self.builder.layout
        self.start = self.builder.decoder_start_token_id
        self.pad, self.eos = ck.pad_id, ck.eos_id
        self.cases, self.heldout, self.new_tokens = validation_inputs(ck, opts)
        self.report = ValidationReport(opts.atol, opts.steps)
        self.info: dict = {"build": {}, "quantization": {}}
        self.options = session_options(opts.threads)
        self._open: list[WeightFile] = []

    def runner(self, paths: dict[str, Path]) -> Seq2SeqRunner:
        return Seq2SeqRunner(paths[ENCODER_ROLE], paths[DECODER_ROLE], self.layout, self.start, self.eos, self.pad,
                             self.options, ["CPUExecutionProvider"])

    def quant_plan(self, precision: str) -> QuantPlan | None:
        if precision != "int4":
            return None
        if self.opts.int4_method != "rtn":
            log.info("int4 of an encoder-decoder rounds to nearest (rtn): %s is built for decoder graphs only",
                     self.opts.int4_method)
        self.info["quantization"]["int4"] = {"method": "rtn"}
        return QuantPlan("rtn", not self.opts.int4_zero_points)

    def build_all(self, precision: str, where: Path, specs: list[BuildSpec],
                  shipped: bool) -> list[tuple[BuildSpec, dict[str, Path]]]:
        """Both graphs of every spec at ``precision`` into ``where``, one weight file for all (a
        merged pair holds its own weights)."""
        o = self.opts
        plan = self.quant_plan(precision)
        wf = WeightFile(where / f"weights.{precision}.bin")
        self._open.append(wf)
        levels = o.levels(precision)
        built = []
        for spec in specs:
            paths = {}
            for role in ROLES:
                rel = pair_path(self.names.get(spec.task_id), precision, role, spec.mode)
                paths[role] = confined(where, rel)
                facts = self.builder.build(paths[role], role, spec, precision, wf if spec.mode != "merged" else None,
                                           o.block_size, levels,
                                           o.prune_threshold, o.adapter_bits,
                                           int8_layout="integer" if o.target == "web" else "nbits", plan=plan)
                self.info["build"][rel if shipped else f"(reference) {rel}"] = facts
            built.append((spec, paths))
        wf.close()
        if plan is not None:
            self.info["quantization"][precision].update(plan.describe())
        return built

    def close(self) -> None:
        for wf in self._open:
            wf.close()
        self._open.clear()

    def check_fp32(self, fp32: list[tuple[BuildSpec, dict[str, Path]]], ref: dict) -> Seq2SeqRunner:
        """fp32 pairs against PyTorch; returns the multi-task pair (every quantized pair's reference)."""
        src = None
        for spec, paths in fp32:
            r = self.runner(paths)
            task = self.names.get(spec.task_id)
            mine = self.cases if task is None else [c for c in self.cases if c.name == task]
            check_pair("fp32_vs_torch", ref, r, paths[DECODER_ROLE].name, mine, self.pad, self.report)
            if task is None:
                src = r
        return src

    def check_quantized(self, quantized: dict, src: Seq2SeqRunner) -> list[dict]:
        """Quantized pairs against the fp32 multi-task pair, a per-task pair also against its own
        precision's multi-task pair; the manifest entries (the first failure raises)."""
        o, entries, fp32_preds = self.opts, [], {}
        for precision, built in quantized.items():
            budget = o.int8_budget if precision == "int8" else o.int4_budget
            min_top1 = o.min_top1_int8 if precision == "int8" else o.min_top1_int4
            multi_ref = None
            for spec, paths in built:
                task = self.names.get(spec.task_id)
                mine = self.cases if task is None else [c for c in self.cases if c.name == task]
                held = self.heldout if task is None else [h for h in self.heldout if h.task == task]
                q = self.runner(paths)
                name = paths[DECODER_ROLE].name
                if task is None:
                    multi_ref = {c.name: _own_reference(q, c, self.pad, o.steps) for c in self.cases}
                elif spec.mode == "task":  # folded: the same tensors, the mixture a constant (a merged
                    # pair quantizes other weights: the quantized gates below are its checks)
                    check_pair("task_vs_multitask", multi_ref, q, name, mine, self.pad, self.report)
                rec = check_quantized_pair(src, q, name, precision, mine, held, self.ck.tokenizer, self.pad, budget,
                                           min_top1, self.new_tokens, fp32_preds, o.steps)
                self.report.record(rec, fatal=False)
                if not rec["passed"]:
                    raise ExportValidationError(describe_failure(rec))
                for entry in _entries(spec, paths, precision, self.names):
                    entry["quantization"] = self.quantization_entry(precision, entry["path"])
                    entries.append(entry)
        return entries

    def quantization_entry(self, precision: str, rel: str) -> dict:
        o = self.opts
        level = o.int4_accuracy_level if precision == "int4" and o.int4_accuracy_level is not None \
            else o.accuracy_level
        zero_points = precision == "int4" and o.int4_zero_points
        return {"method": "rtn", "zero_points": zero_points, "block_size": o.block_size,
                "accuracy_level": {"4": level, "8": o.accuracy_level} if precision == "int4"
                else {"8": o.accuracy_level},
                "matrix_bits": self.info["build"].get(rel, {}).get("matrix_bits", {})}

    def write_files(self, checkpoint: Path, tmp: Path, entries: list[dict], t_start: float) -> dict:
        """Tokenizer, tasks, validation.json and the manifest; returns the manifest."""
        manifest = bundle_files(self, checkpoint, tmp, t_start, entries, architecture=ARCHITECTURE,
                                graph_contract=SEQ2SEQ_CONTRACT, opset=OPSET, decoder_start_token_id=self.start,
                                kv_cache=self.layout.kv.to_dict() | {"shared_buffer": False},
                                seq2seq=self.layout.to_dict())
        return write_manifest(tmp, manifest).to_json()


def _own_reference(runner: Seq2SeqRunner, case, pad: int, steps: int) -> dict:
    """A pair's own greedy path and outputs on a case (the reference of another pair)."""
    tokens = runner.greedy(case.prompts, case.task_ids, steps, eos_id=-1)
    return {"tokens": tokens, **pair_outputs(runner, case, pad, tokens)}


