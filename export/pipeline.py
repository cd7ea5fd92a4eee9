"""Checkpoint -> validated bundle (format v2): build, validate, write.

Graphs are built straight from the checkpoint's tensors (``export.builder``). Each precision
asked for gets one weight file (``weights.<precision>.bin``) holding the base model and the
adapter tensors every task shares, read by the multi-task graph and every per-task graph of
that precision. A fp32 reference that is not shipped is built in a temporary directory, used
for the checks, and dropped. ``genai_config.json`` and ``tokenizer_config.json`` make the
bundle an onnxruntime-genai model folder too (``export.genai``). Everything is written to a
temporary directory renamed into place only after every check passed
(``alter_edge.io.atomic_dir``): a failed export leaves no bundle behind.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import time
from pathlib import Path

from alter_edge.errors import ConfigError, OutputError
from alter_edge.io import atomic_dir, disk_full_error, is_disk_full, tree_bytes
from alter_edge.runtime.contract import CONTRACT
from alter_edge.runtime.session import GraphRunner, session_options

from .builder import BuildSpec, DecoderBuilder
from .bundle import bundle_files, write_manifest
from .genai import write_genai_files
from .graph import OPSET, WeightFile
from .options import ExportOptions, confined, graph_path
from .quant import (
    QuantPlan,
    collect_hessians,
    expand_groups,
)
from .request import check_request
from .sensitivity import choose_8bit, measure_sensitivity
from .validate import (
    ExportValidationError,
    ValidationReport,
    check_against,
    check_quantized,
    describe_failure,
    reference_outputs,
    torch_reference,
    validation_inputs,
)

log = logging.getLogger(__name__)

__all__ = ["ExportOptions", "confined", "export_checkpoint", "graph_path"]


def export_checkpoint(checkpoint: Path, out: Path, opts: ExportOptions) -> dict:
    """Write a validated bundle for ``checkpoint`` to ``out``; returns the manifest."""
    from alter_edge.training.checkpoint import load_checkpoint

    out, checkpoint = Path(out), Path(checkpoint)
    check_request(checkpoint, out, opts)
    t_start = time.perf_counter()
    ck = load_checkpoint(checkpoint, base_model=opts.base_model)
    specs = ck.tasks.resolve(opts.tasks) if opts.tasks else []
    # what to build at each precision: the multi-task graph, then per task (folded or merged)
    plan = [BuildSpec("multitask")] + [BuildSpec("merged" if opts.merged else "task", s.id) for s in specs]
    names = {s.id: s.name for s in specs}
    if ck.model.seq2seq:  # T5: an encoder and a decoder graph per precision and task
        from .seq2seq_export import export_seq2seq

        return export_seq2seq(ck, checkpoint, out, opts, plan, names, t_start)
    for precision in {"fp32", *opts.precisions}:  # every file name, before anything is written
        for spec in plan:
            confined(out, graph_path(names.get(spec.task_id), precision, spec.mode))
    ex = _Export(ck, opts, names)

    from tqdm.auto import tqdm

    ship_fp32 = "fp32" in opts.precisions
    ex.bar = tqdm(total=len(plan) * len(opts.precisions) + int(not ship_fp32), desc="export", unit="graph",
                  disable=not opts.progress, leave=False)
    try:
        with tempfile.TemporaryDirectory(prefix="alter-edge-export-") as work, atomic_dir(out, opts.overwrite) as tmp:
            try:
                manifest = _export_into(ex, checkpoint, tmp, Path(work), plan, ship_fp32, t_start)
            except Exception as e:
                if not is_disk_full(e):
                    raise
                raise _no_space(e, out, tmp, Path(work)) from e
    except OutputError:
        raise
    except Exception as e:  # no room for the temporary folders themselves
        if not is_disk_full(e):
            raise
        where = getattr(e, "filename", None)
        folder = Path(where).parent if where else out.parent  # mkdtemp names the folder it tried
        raise disk_full_error(f"the bundle {out}", folder, 0, "no bundle was written") from e
    finally:
        ex.close()
    log.info("bundle written to %s in %.1fs", out, time.perf_counter() - t_start)
    return manifest


def _export_into(ex: _Export, checkpoint: Path, tmp: Path, work: Path, plan: list[BuildSpec], ship_fp32: bool,
                 t_start: float) -> dict:
    """Build, check and write the bundle's files into ``tmp`` (a reference fp32 graph that is
    not shipped goes to ``work``); returns the manifest."""
    opts = ex.opts
    # 1. the PyTorch reference, then every graph built while the torch weights are at hand
    ref = {c.name: torch_reference(ex.ck.model, c, ex.pad, opts.steps) for c in ex.cases}
    fp32 = ex.build_all("fp32", tmp if ship_fp32 else work, plan if ship_fp32 else plan[:1], ship_fp32)
    quantized = {p: ex.build_all(p, tmp, plan, True, ex.quant_plan(p)) for p in opts.precisions if p != "fp32"}
    ex.drop_torch()
    # 2. fp32 graphs against PyTorch; 3. quantized graphs against the fp32 multi-task graph
    src = ex.check_fp32(fp32, ref)
    entries = [_entry(s, p, "fp32", ex.names) for s, p in fp32] if ship_fp32 else []
    entries += ex.check_quantized(quantized, src)
    del src
    ex.bar.close()
    return ex.write_files(checkpoint, tmp, entries, t_start)


def _no_space(e: BaseException, out: Path, tmp: Path, work: Path):
    """The one-line error of a full disk: the folder that filled (the bundle's, or the
    temporary folder of an fp32 reference that is not shipped) and the bytes needed there."""
    where = getattr(e, "filename", None)
    in_work = where is not None and Path(os.path.abspath(where)).is_relative_to(os.path.abspath(work))
    folder = work.parent if in_work else out.parent
    written = tree_bytes(work if in_work else tmp)
    what = "the export's reference graphs" if in_work else f"the bundle {out}"
    return disk_full_error(what, folder, written + getattr(e, "pending", 0),
                           "no bundle was written (the partial output was removed)")


class _Export:
    """One export's state between the steps of ``export_checkpoint``: the builder while the
    torch weights are at hand, the validation cases and held-out rows, the report, the facts
    that go to validation.json."""

    def __init__(self, ck, opts: ExportOptions, names: dict[int, str]):
        self.ck, self.opts, self.names = ck, opts, names
        self.builder = DecoderBuilder(ck.model)
        self.kv = self.builder.kv
        prompt, limit = ck.train_config.max_prompt_tokens, self.kv.max_sequence_length
        if prompt >= limit:
            raise ConfigError(f"the checkpoint's max_prompt_tokens {prompt} leaves no room for an answer in the "
                              f"{limit} positions the base model covers: train with max_prompt_tokens below {limit}")
        self.dims = {"vocab_size": self.builder.vocab, "hidden_size": int(self.builder.cfg.hidden_size),
                     "num_attention_heads": self.builder.heads}  # for genai_config.json
        self.pad, self.eos = ck.pad_id, ck.eos_id
        self.cases, self.heldout, self.new_tokens = validation_inputs(ck, opts)
        self.report = ValidationReport(opts.atol, opts.steps)
        self.info: dict = {"build": {}, "quantization": {}}
        self.session_options = session_options(opts.threads)
        self.bar = None
        self._open: list[WeightFile] = []
        self._calibration = None  # int4 calibration rows: (prompts, answers, task ids)
        self._hessians = None  # int4 gptq: (Hessians per site, facts)

    def runner(self, path: Path) -> GraphRunner:
        return GraphRunner(path, self.kv, self.session_options, ["CPUExecutionProvider"])

    def calibration(self) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """The int4 calibration rows: prompts, answers (+ eos) and task ids of the first
        ``calibration_rows`` train rows of each task (file order), else the validation prompts
        (no answers)."""
        from alter_edge.data import load_task_rows, recorded_data_path, split_task_rows
        from alter_edge.prompts import encode_example

        ck, o, tc = self.ck, self.opts, self.ck.train_config
        data = o.data
        if data is None and ck.state.get("data"):
            data = recorded_data_path(ck.state["data"])
        rows = []
        if data is None and ck.state.get("data") or data is not None and data.is_file():
            all_rows, source = load_task_rows(data)
            train = split_task_rows(all_rows, source, tc.dev_fraction, tc.split_seed)[0]
            for spec in ck.tasks:
                rows += [(spec, r) for r in train if r.task == spec.name][:o.calibration_rows]
        prompts, answers, tids = [], [], []
        for spec, r in rows:
            p, t = encode_example(ck.tokenizer, spec, r.input, r.target, self.eos, tc.max_prompt_tokens)
            prompts.append(p)
            answers.append(t)
            tids.append(spec.id)
        if not prompts:  # no rows: the validation prompts
            for c in self.cases:
                prompts += c.prompts
                answers += [[] for _ in c.prompts]
                tids += c.task_ids
        return prompts, answers, tids

    def quant_plan(self, precision: str) -> QuantPlan | None:
        """int4: the quantizer the options ask for (gptq: calibrated here, while the torch model
        is at hand); int8: None (symmetric round to nearest)."""
        o = self.opts
        if precision != "int4":
            return None
        t0 = time.perf_counter()
        auto = (o.int4_8bit or "").strip() == "auto"
        try:
            groups = [] if auto else expand_groups(o.int4_8bit, self.builder.kv.num_layers)
        except ValueError as e:
            raise ConfigError(f"int4 8-bit groups (int4_8bit): {e}") from e
        plan = QuantPlan(o.int4_method, not o.int4_zero_points, {g: 8 for g in groups},
                         block_size_8bit=o.int4_8bit_block_size)
        facts: dict = {"method": o.int4_method}
        if o.int4_method == "gptq" or auto:
            if self._calibration is None:
                self._calibration = self.calibration()
            prompts, answers, tids = self._calibration
            facts["calibration_rows"] = len(prompts)
        if o.int4_method == "gptq":
            if self._hessians is None:  # once per export (the rows do not change with the options)
                seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
                hessians, tokens = collect_hessians(self.ck.model, self.builder, seqs, tids, self.pad)
                self._hessians = hessians, {"tokens": tokens, "hessian_seconds": round(time.perf_counter() - t0, 1)}
                log.info("int4 calibration: %d rows, %d tokens in %.1fs", len(seqs), tokens,
                         time.perf_counter() - t0)
            plan.hessians = self._hessians[0]
            facts.update(self._hessians[1])
        if auto:
            t1 = time.perf_counter()
            n = o.sensitivity_rows
            keep = [i for i, tid in enumerate(tids) if answers[i] and sum(t == tid for t in tids[:i]) < n]
            sens = measure_sensitivity(self.ck.model, self.builder, plan, [prompts[i] for i in keep],
                                       [answers[i] for i in keep], [tids[i] for i in keep], self.pad,
                                       o.block_size)
            budget = o.int4_8bit_fraction * sens["total_weights"] * 0.5  # bytes: half a byte more a weight
            if o.int4_8bit_mb is not None:
                budget = min(budget, o.int4_8bit_mb * 1e6)
            groups = choose_8bit(sens, budget, o.int4_zero_points)
            plan.group_bits = {g: 8 for g in groups}
            facts["sensitivity"] = {"rows": len(keep), "seconds": round(time.perf_counter() - t1, 1),
                                    "fp32_loss": round(sens["fp32_loss"], 5), "budget_mb": round(budget / 1e6, 2),
                                    "total_weights": sens["total_weights"],
                                    "groups": {k: {"loss_increase": v["loss_increase"], "weights": v["weights"]}
                                               for k, v in sens["groups"].items()}}
            log.info("int4 sensitivity: %s -> 8 bits: %s", facts["sensitivity"]["groups"], groups)
        facts["seconds_before_build"] = round(time.perf_counter() - t0, 1)
        self.info["quantization"]["int4"] = facts
        return plan

    def build_all(self, precision: str, where: Path, specs: list[BuildSpec], shipped: bool,
                  plan: QuantPlan | None = None) -> list[tuple[BuildSpec, Path]]:
        """Build ``specs`` at ``precision`` into ``where``, sharing one weight file (a merged
        graph has its own weights)."""
        o = self.opts
        wf = WeightFile(where / f"weights.{precision}.bin")
        self._open.append(wf)
        levels = o.levels(precision)
        built = []
        for spec in specs:
            rel = graph_path(self.names.get(spec.task_id), precision, spec.mode)
            path = confined(where, rel)
            facts = self.builder.build(path, spec, precision, wf if spec.mode != "merged" else None,
                                       o.block_size, levels, o.prune_threshold, o.adapter_bits,
                                       int8_layout="integer" if o.target == "web" else "nbits", plan=plan)
            self.info["build"][rel if shipped else f"(reference) {rel}"] = facts
            built.append((spec, path))
            self.bar.update()
        wf.close()
        if plan is not None:
            self.info["quantization"][precision].update(plan.describe())
            self.info["quantization"][precision]["matrices"] = dict(sorted(plan.methods_used.items()))
        return built

    def close(self) -> None:
        """Close the weight files still open (a build that failed), so their folder can go."""
        for wf in self._open:
            wf.close()
        self._open.clear()
        if self.bar is not None:
            self.bar.close()

    def drop_torch(self) -> None:
        """The torch model is done: only onnxruntime sessions from here."""
        self.ck.model = self.builder = None
        gc.collect()

    def check_fp32(self, fp32: list[tuple[BuildSpec, Path]], ref: dict) -> GraphRunner:
        """fp32 graphs against PyTorch (a per-task graph on its task's cases); returns the
        multi-task graph's session, the fp32 reference of every quantized graph."""
        src = None
        for spec, path in fp32:
            r = self.runner(path)
            mine = self.cases if spec.mode == "multitask" else [c for c in self.cases
                                                               if c.name == self.names[spec.task_id]]
            check_against("fp32_vs_torch", ref, r, path.name, mine, self.pad, self.report)
            if spec.mode == "multitask":
                src = r
            del r
        return src

    def check_quantized(self, quantized: dict[str, list[tuple[BuildSpec, Path]]], src: GraphRunner) -> list[dict]:
        """Quantized graphs against the fp32 multi-task graph (run with each row's task id), a
        folded per-task graph also against its own precision's multi-task graph; the manifest
        entries of the graphs that passed (the first that fails raises)."""
        o, pad, entries = self.opts, self.pad, []
        fp32_preds: dict[str, list[str]] = {}
        for precision, built in quantized.items():
            budget = o.int8_budget if precision == "int8" else o.int4_budget
            min_top1 = o.min_top1_int8 if precision == "int8" else o.min_top1_int4
            multi_ref = None  # the quantized multi-task graph's own outputs: a per-task graph must equal them
            for spec, path in built:
                task = self.names.get(spec.task_id)
                mine = self.cases if task is None else [c for c in self.cases if c.name == task]
                held = self.heldout if task is None else [h for h in self.heldout if h.task == task]
                q = self.runner(path)
                if task is None:
                    multi_ref = {c.name: reference_outputs(q, c, pad, o.steps) for c in self.cases}
                elif spec.mode == "task":  # folded: the same tensors, the mixture a constant
                    check_against("task_vs_multitask", multi_ref, q, path.name, mine, pad, self.report)
                rec = check_quantized(src, q, path.name, precision, mine, held, self.ck.tokenizer, pad, self.eos,
                                      budget, min_top1, self.new_tokens, fp32_preds, o.steps)
                del q
                self.report.record(rec, fatal=False)
                if not rec["passed"]:
                    raise ExportValidationError(describe_failure(rec))
                entry = _entry(spec, path, precision, self.names)
                entry["quantization"] = self.quantization_entry(precision, path.name)
                entries.append(entry)
        return entries

    def quantization_entry(self, precision: str, rel: str) -> dict:
        """A quantized graph's manifest record: how its weights were rounded and each stored
        matrix's bits (``key -> bits``, the keys of its weight file)."""
        o = self.opts
        q = self.info["quantization"].get(precision, {})
        level = o.int4_accuracy_level if precision == "int4" and o.int4_accuracy_level is not None \
            else o.accuracy_level
        return {"method": q.get("method", "rtn"), "zero_points": bool(q.get("zero_points", False)),
                "block_size": o.block_size, "block_size_8bit": o.int4_8bit_block_size if precision == "int4" else None,
                "accuracy_level": {"4": level, "8": o.accuracy_level} if precision == "int4"
                else {"8": o.accuracy_level},
                "matrix_bits": self.info["build"].get(rel, {}).get("matrix_bits", {})}

    def write_files(self, checkpoint: Path, tmp: Path, entries: list[dict], t_start: float) -> dict:
        """Tokenizer, tasks, validation.json, the onnxruntime-genai files and the manifest;
        returns the manifest."""
        manifest = bundle_files(self, checkpoint, tmp, t_start, entries, graph_contract=CONTRACT, opset=OPSET,
                                kv_cache=self.kv.to_dict())
        write_genai_files(tmp, manifest.to_json(), entries, **self.dims)  # listed in the manifest's files below
        return write_manifest(tmp, manifest).to_json()




def _entry(spec: BuildSpec, path: Path, precision: str, names: dict) -> dict:
    return {"path": path.name, "task": names.get(spec.task_id), "precision": precision, "mode": spec.mode,
            "external_data": [] if spec.mode == "merged" else [f"weights.{precision}.bin"]}
