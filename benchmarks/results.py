"""The quality table (issue 5), reproducible from one data file with one command.

    python benchmarks/results.py --data ../shared/data/alter-mix/train.jsonl --out runs/results \\
        [--seeds 0 1 2] [--rows mta shared_lora ...] [--quick] [--base-model NAME|PATH] \\
        [--set KEY=JSON] [--export-set KEY=JSON]

Every row is a named method (``ROWS``; ``--rows`` picks a subset). Each (row, seed) is an
ordinary ``run_training`` into ``OUT/<row>-s<seed>/checkpoint``, run in a child process of its
own (so wall time and peak RSS are that row's), then scored on the fixed dev split with the
project's evaluation (``training.trainer.evaluate_checkpoint``: greedy generation exact match /
ROUGE-L, and label scoring for classify tasks). The finished record is
``OUT/<row>-s<seed>/result.json``; a rerun reuses it, and a killed training run resumes.

The ``export`` row takes the best MTA row (any row with a task mixture; highest mean overall
score; its first seed's checkpoint), exports its multi-task graph with ``alter_edge.export``
(fp32, int8, int4) and scores every
precision through the torch-free runtime (``alter_edge.runtime.EdgeModel``) on the same dev
rows, next to the PyTorch fp32 score, with each precision's bundle size.

Writes ``OUT/results.json``, ``OUT/results.md`` and the plots ``OUT/per_task.png`` and
``OUT/export_size.png``. docs/results.md says what each row means and how to read the output.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from alter_edge.io import atomic_write_bytes, atomic_write_text, read_json, sha256_file

STAGE2_SHARE = "stage2_share"  # a row key, not a TrainConfig field: stage 2's share of all steps
STEPS_SCALE = "steps_scale"  # a row key: the row's total steps are this multiple of the budget


def preset_row(name: str, keep: tuple[str, ...] = ()) -> dict:
    """A preset (alter_edge/presets.py) as a row: its fields, less its step budget (the table's
    budget applies) unless named in ``keep``."""
    from alter_edge.presets import PRESETS

    p = PRESETS[name]
    budget = ("stage1_steps", "stage2_steps", "epochs", "batch_size")
    return {**{k: v for k, v in p.train.items() if k not in budget or k in keep}, "mta": dict(p.mta)}


# name -> (TrainConfig overrides on top of the defaults and --set, what the row is).
ROWS: dict[str, tuple[dict, str]] = {
    "zero_shot": ({"stage1_steps": 0, "stage2_steps": 0, "use_cache": False},
                  "the base model prompted, no training (zero-initialised adapters: the MTA model "
                  "equals the base)"),
    "shared_lora": ({"mta": {"num_adapters": 1}}, "one LoRA shared by every task (K = 1)"),
    # K = 5 LoRAs of rank 16 train the parameters of one LoRA of rank 80; alpha 160 keeps the
    # update's scale (alpha / rank = 2) that of the mixture's adapters
    "shared_lora_r80": ({"mta": {"num_adapters": 1, "lora_rank": 80, "lora_alpha": 160.0}},
                        "one shared LoRA at rank 80: the trainable count of the default mixture (K = 5 x rank 16)"),
    "shared_lora_2x": ({"mta": {"num_adapters": 1}, STEPS_SCALE: 2},
                       "one shared LoRA, twice the step budget"),
    # the default mixture took 1.17x the shared LoRA's CPU seconds on fold 0 of the paper's mix (its K = 5
    # adapters a projection): 1.25x the steps gives the baseline at least the mixture's time
    "shared_lora_eq": ({"mta": {"num_adapters": 1}, STEPS_SCALE: 1.25},
                       "one shared LoRA, 1.25x the step budget: at least the default MTA's training time"),
    "hard_routing": ({"mta": {"num_shared": 0, "prior_strength": 50.0}},
                     "one LoRA per task, mixture fixed one-hot (never trained)"),
    "mta_one_stage": ({"stages": 1}, "MTA (lora), adapters and mixture trained together"),
    "mta": ({}, "MTA (lora), two stages: the defaults"),
    "mta_s2_holdout": ({"stage2_holdout": 0.1},
                       "MTA (lora), two stages; stage 2 trains the mixture on 10% of each task's train "
                       "rows that stage 1 never saw"),
    # ffn: K full MLP copies are ~2.65M parameters each per SmolLM2 block, so 12 blocks x K = 5
    # would train 159M (more than the base model); 4 blocks train 53M. Full weights, not
    # low-rank deltas: a fine-tuning learning rate, not the LoRA one (3e-3).
    "mta_ffn": ({"mta": {"adapter_kind": "ffn", "lora_attention": None, "num_top_layers": 4},
                 "stage1_lr": 2e-4},
                "MTA, ffn kind (upcycled MLP experts in the top 4 blocks, stage-1 lr 2e-4), two stages"),
    # The budget split differently: a quarter of the steps in stage 2 (160 + 480 at the
    # defaults) -- fewer stage-1 steps to memorise with, a longer stage 2 for the mixture.
    "mta_long_s2": ({STAGE2_SHARE: 0.25}, "MTA (lora), two stages, a quarter of the steps in stage 2"),
    # A softer stage-1 prior: a task's own adapter starts at ~0.37 of the mixture, not ~0.56, so
    # every adapter sees more of the other tasks in stage 1.
    "mta_soft_prior": ({"mta": {"prior_strength": 0.1}},
                       "MTA (lora), two stages, softer prior (own adapter ~0.37 instead of ~0.56)"),
    # A learned per-token gate (MTAConfig.gate = "token"): the mixture also reads the hidden
    # state entering each block. Tests whether stage 2 gains once the mixture may vary by token,
    # not only by task. Not exportable (nothing to fold into a per-task graph).
    "mta_gate": ({"mta": {"gate": "token"}},
                 "MTA (lora), two stages; stage 2 learns the task mixture and a per-token gate"),
    "mta_gate_one_stage": ({"stages": 1, "mta": {"gate": "token"}},
                           "MTA (lora) with the per-token gate, everything trained together"),
    "mta_k2": ({"mta": {"num_adapters": 2}}, "ablation: K = 2 adapters per block"),
    "mta_k8": ({"mta": {"num_adapters": 8}}, "ablation: K = 8 adapters per block"),
    "mta_top4": ({"mta": {"num_top_layers": 4}}, "ablation: adapters in the top 4 blocks"),
    "mta_top8": ({"mta": {"num_top_layers": 8}}, "ablation: adapters in the top 8 blocks"),
    "mta_no_attn": ({"mta": {"lora_attention": False}}, "ablation: LoRA on the MLP projections only"),
    "mta_2x": ({STEPS_SCALE: 2}, "MTA (lora), two stages, twice the step budget"),
    # the authors' configuration (train --preset reference): its own budget, 10 epochs at batch 16
    # (--quick: the quick budget), full fine-tuning with no prefix cache
    "reference": (preset_row("reference", keep=("epochs", "batch_size")),
                  "the authors' configuration: 5 upcycled ffn experts in the middle block, a mixture per task "
                  "group, full fine-tuning (base trained), one stage, 10 epochs, lr 1.2e-4"),
    "poly": (preset_row("poly"), "Poly-style: lora, uniform mixture start, mixture at 100x the adapters' lr, "
                                 "mixture x K; one stage"),
    # poly diverged on the paper's mix (fold 0 of --folds 5: loss spikes to 6-7 through training,
    # overall 0.300): K adapters at full strength each (mixture x K, uniform) move K times as fast as
    # one LoRA under Adam, so this row divides the adapters' lr by K = 5 (the mixture's stays 0.3)
    "poly_lr": ({**preset_row("poly"), "stage1_lr": 6e-4, "mixture_lr_scale": 500.0},
                "Poly-style as poly, the adapters' lr divided by K (6e-4; the mixture's lr kept at 0.3)"),
    # the reference preset at the shared LoRA's training time: full fine-tuning costs ~25 CPU-s a step
    # here against ~2.7 for the shared LoRA's 640, so ~70 steps (~0.7 of an epoch), not its 10 epochs
    "reference_eq": ({**preset_row("reference", keep=("batch_size",)), STEPS_SCALE: 70 / 640},
                     "the authors' configuration (as reference) at about the shared LoRA's training time: 70 steps "
                     "of 16"),
    "hydra": (preset_row("hydra"), "shared A, per-task B heads (rank 6: one shared rank-16 LoRA's trainable "
                                   "count); one stage"),
}
EXPORT = "export"
ALL_ROWS = (*ROWS, EXPORT)
# Rows with no mixture to learn spend stage 2's steps in stage 1: every trained row sees the
# same examples (total optimizer steps x batch size).
ONE_ADAPTER_STAGE = ("shared_lora", "shared_lora_r80", "shared_lora_2x", "shared_lora_eq", "hard_routing", "mta_one_stage",
                     "mta_gate_one_stage", "poly", "poly_lr", "hydra")
# The rows the export row chooses from ("the best MTA model"): every row with a task mixture, one
# stage or two. It exports the multi-task graph (task_ids as an input), which a per-token gate
# needs: its mixture does not fold into per-task graphs.
MTA_ROWS = tuple(r for r in ROWS if r not in ("zero_shot", "shared_lora", "shared_lora_r80", "shared_lora_2x", "shared_lora_eq",
                                              "hard_routing"))
# --quick: a smoke budget (training's own dev evaluations cut to a few rows, too).
QUICK_CONFIG = {"stage1_steps": 6, "stage2_steps": 2, "batch_size": 8, "eval_max_rows": 8}
QUICK_EVAL_PER_TASK = 8
QUICK_EXPORT = {"heldout_rows": 4}
# --folds: a fold's training keeps only a small dev split of its own (its rows are scored in their
# fold anyway) and evaluates a few rows of it after each stage
CV_CONFIG = {"dev_fraction": 0.02, "eval_max_rows": 8}
CV_DIR = "folds"
# The export row's bundles: (folder, ExportOptions overrides, {precision in the bundle: its label in
# the table}).
EXPORT_BUNDLES = (
    ("bundle", {"fp32": True}, {"fp32": "fp32", "int8": "int8", "int4": "int4"}),
)
# A precision whose graph fails the export's quality gates is recorded as failed and then
# exported again with the gates lifted, so its cost is measured anyway.
LIFTED_GATES = {"int8": {"int8_budget": 100.0, "min_top1_int8": 0.0},
                "int4": {"int4_budget": 100.0, "min_top1_int4": 0.0}}
# Set for the child processes unless already set: OpenMP workers that busy-wait made a tiny
# model's evaluation of 6 rows take 10.3 s instead of 0.03 s on a shared, oversubscribed 2-core
# host (docs/runtime.md found the same for PyTorch eager decoding).
CHILD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
# Job-spec keys that do not change a result (paths may move; the sha256s identify the data).
VOLATILE = ("data", "eval_data", "checkpoint", "threads")


class ResultsError(Exception):
    """A problem with the command or the output folder, said in one line."""


# -- planning (parent process, no training here) -------------------------------------------

def parse_sets(items: list[str], flag: str) -> dict:
    out: dict = {}
    for kv in items:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise ResultsError(f"{flag}: expected KEY=JSON, got {kv!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as e:
            raise ResultsError(f"{flag} {key}: {value!r} is not JSON ({e.msg}); a string needs "
                               f"quotes, e.g. {key}='\"text\"'") from e
    return out


def row_config(name: str, seed: int, base: dict, quick: bool = False):
    """The TrainConfig of one (row, seed): defaults < ``base`` (--quick, --set) < the row."""
    from alter_edge.config import TrainConfig

    over = json.loads(json.dumps(ROWS[name][0]))
    mta = {**base.get("mta", {}), **over.pop("mta", {})}
    share = over.pop(STAGE2_SHARE, None)
    scale = over.pop(STEPS_SCALE, 1)
    if quick:  # a row's own budget (the reference row's epochs) gives way to the smoke budget
        for k in ("epochs", "batch_size"):
            over.pop(k, None)
    cfg = {**base, **over, "seed": seed, "mta": mta}
    d = TrainConfig()
    total = base.get("stage1_steps", d.stage1_steps) + base.get("stage2_steps", d.stage2_steps)
    if scale != 1:
        total = round(total * scale)
        cfg["stage1_steps"] = round(base.get("stage1_steps", d.stage1_steps) * scale)
        cfg["stage2_steps"] = total - cfg["stage1_steps"]
    if share is not None:  # the same total, split differently
        cfg["stage2_steps"] = round(total * share)
        cfg["stage1_steps"] = total - cfg["stage2_steps"]
    if name in ONE_ADAPTER_STAGE:
        cfg["stage1_steps"] = total
        cfg["stage2_steps"] = 0
        cfg["stage2_holdout"] = 0.0  # no stage 2 to keep rows for
    return TrainConfig(**cfg)


def trained_groups(cfg) -> set[str]:
    """Parameter groups that some stage with steps actually trains."""
    return {g for st in cfg.stage_plan() if st.steps > 0 or cfg.epochs > 0 for g in st.trains}


def normalized_spec(spec: dict) -> dict:
    """A stored job spec with its train config filled in with today's defaults, so a TrainConfig
    field added later (whose default keeps the old behaviour) does not orphan finished rows."""
    from alter_edge.config import TrainConfig
    from alter_edge.errors import ConfigError

    out = dict(spec)
    if isinstance(spec.get("source_spec"), dict):  # the export row: the spec of the run it exports
        out["source_spec"] = normalized_spec(spec["source_spec"])
    if isinstance(spec.get("train_config"), dict):
        try:
            out["train_config"] = TrainConfig.from_dict(spec["train_config"]).to_dict()
        except (ConfigError, TypeError):
            pass  # unknown to this version: left as stored, so it shows up as a difference
    return out


def spec_diff(a: dict, b: dict) -> list[str]:
    """Keys (nested ones as a.b) on which two job specs differ, paths left out."""
    keys = sorted((set(a) | set(b)) - set(VOLATILE))
    diff = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            diff += [f"{k}.{s}" for s in spec_diff(x, y)] or ([] if x == y else [k])
        elif x != y:
            diff.append(k)
    return diff


@dataclass
class Job:
    row: str
    seed: int
    dir: Path
    spec: dict
    fold: int | None = None

    @property
    def name(self) -> str:
        return self.dir.name

    def finished(self) -> dict | None:
        """The stored result when it was made with this spec; raises when the folder holds a
        result made with other settings (a training run must not be mixed into another)."""
        path = self.dir / "result.json"
        if not path.is_file():
            return None
        res = read_json(path, ResultsError)
        diff = spec_diff(normalized_spec(res.get("spec", {})), normalized_spec(self.spec))
        if not diff:
            return res
        if self.row == EXPORT:  # derived from other rows: redo it
            return None
        raise ResultsError(f"{self.dir} holds a result made with other settings ({', '.join(diff)}); "
                           "choose another --out, or delete that folder to redo it")


def eval_rows(dev: list, per_task: int) -> list:
    """The scored rows: the whole dev split, or its first ``per_task`` rows of each task (the
    split shuffles each task's rows, so these are a seeded sample)."""
    if not per_task:
        return list(dev)
    seen: dict[str, int] = {}
    out = []
    for r in dev:
        if seen.get(r.task, 0) < per_task:
            out.append(r)
            seen[r.task] = seen.get(r.task, 0) + 1
    return out


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "python": platform.python_version()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        info["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    except (OSError, ValueError, AttributeError):
        pass
    return info


def git_commit() -> dict | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


# -- child processes ------------------------------------------------------------------------

def summarize_eval(ev: dict, groups: dict[str, list[str]], rows: list | None = None,
                   kinds: dict[str, str] | None = None) -> dict:
    """Scores of one evaluation, both ways: ``overall`` (generation for every task, the
    paper's way) and ``overall_ls`` (classify tasks by label scoring, generate tasks as before);
    with the scored ``rows`` and the tasks' ``kinds``, also ``overall_char`` (the authors' metric:
    generate tasks by ROUGE-L on characters)."""
    from alter_edge.metrics import overall_score
    from alter_edge.rouge import authors_row_metric

    per_task = {t: round(v, 4) for t, v in ev["per_task"].items()}
    ls = {t: round(v, 4) for t, v in (ev.get("label_scoring") or {}).items()}
    out = {"per_task": per_task, "overall": round(ev["overall"], 4), "label_scoring": ls,
           "overall_ls": round(overall_score({**ev["per_task"], **(ev.get("label_scoring") or {})}, groups), 4),
           "counts": ev.get("counts", {}), "seconds": round(ev.get("seconds", 0.0), 1)}
    if rows is not None and ev.get("predictions") is not None and kinds is not None:
        # the authors' metric beside ours: generation by ROUGE-L on characters (classify: exact match)
        chars = row_scores_by_task(rows, ev["predictions"], kinds, authors_row_metric)
        out["per_task_char"] = {t: round(v, 4) for t, v in chars.items()}
        out["overall_char"] = round(overall_score(chars, groups), 4)
    return out


def row_scores_by_task(rows: list, preds: list, kinds: dict[str, str], metric_of) -> dict[str, float]:
    """Mean of ``metric_of(kind)(prediction, target)`` per task."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for r, p in zip(rows, preds, strict=True):
        sums[r.task] = sums.get(r.task, 0.0) + metric_of(kinds[r.task])(p or "", r.target)
        counts[r.task] = counts.get(r.task, 0) + 1
    return {t: sums[t] / counts[t] for t in sorted(sums)}


def score_checkpoint(ckpt: Path, eval_data: Path, dtype: str, progress: bool) -> dict:
    from alter_edge.data import load_jsonl
    from alter_edge.tasks import TaskRegistry
    from alter_edge.training.trainer import evaluate_checkpoint

    ev = evaluate_checkpoint(ckpt, eval_data, label_scoring=True, progress=progress, compute_dtype=dtype,
                             with_predictions=True)
    return {**summarize_eval(ev, TaskRegistry.load(ckpt / "tasks.json").groups(), load_jsonl(eval_data), ev["kinds"]),
            "dtype": ev["dtype"], "predictions": ev["predictions"]}  # per row of the eval file: benchmarks/paired.py


def score_bundle(bundle: Path, precision: str, rows: list, threads: int | None, progress: bool,
                 batch_size: int = 16) -> dict:
    """Score one precision of a bundle through the runtime, as a user would run it: greedy
    ``EdgeModel.generate`` (the same new-token budget as training's evaluation) and
    ``EdgeModel.classify`` for the label-scoring score."""
    from tqdm.auto import tqdm

    from alter_edge.metrics import overall_score, row_metric
    from alter_edge.runtime import EdgeModel
    from alter_edge.training.evaluate import token_budget

    t0 = time.perf_counter()
    m = EdgeModel.load(bundle, threads=threads, precision=precision, spinning=False)
    max_new = m.bundle.max_new_tokens
    sums: dict[str, float] = {}
    ls: dict[str, float] = {}
    counts: dict[str, int] = {}
    preds: list[str | None] = [None] * len(rows)
    bar = tqdm(total=len(rows), desc=f"runtime {precision}", unit="row", disable=not progress, leave=False)
    for spec in m.tasks:
        mine = [i for i, r in enumerate(rows) if r.task == spec.name]
        if not mine:
            continue
        mine.sort(key=lambda i: len(m.encode(rows[i].input, spec.name)[0]))  # less padding per batch
        fn = row_metric(spec.kind)
        budget = token_budget(m.tokenizer, spec, max_new)
        hits = 0.0
        for s in range(0, len(mine), batch_size):
            idx = mine[s : s + batch_size]
            batch = [rows[i] for i in idx]
            texts = [r.input for r in batch]
            gens = m.generate(texts, task=spec.name, max_new_tokens=budget, truncate=True)  # as eval
            for i, g in zip(idx, gens, strict=True):
                preds[i] = g.text
            sums[spec.name] = sums.get(spec.name, 0.0) + sum(
                fn(g.text, r.target) for g, r in zip(gens, batch, strict=True))
            if spec.kind == "classify":
                hits += sum(c.label == r.target.strip()
                            for c, r in zip(m.classify(texts, task=spec.name, truncate=True), batch, strict=True))
            bar.update(len(batch))
        counts[spec.name] = len(mine)
        if spec.kind == "classify":
            ls[spec.name] = hits / len(mine)
    bar.close()
    per_task = {t: sums[t] / counts[t] for t in sorted(sums)}
    ev = {"per_task": per_task, "overall": overall_score(per_task, m.tasks.groups()),
          "label_scoring": ls, "counts": counts, "seconds": time.perf_counter() - t0}
    ev["predictions"] = preds
    return {**summarize_eval(ev, m.tasks.groups(), rows, {t.name: t.kind for t in m.tasks}),
            "predictions": preds}  # per row: benchmarks/paired.py


def precision_size(manifest: dict, bundle: Path, precision: str) -> dict:
    """Bytes an app shipping only this precision carries: its graphs and their weight files +
    tokenizer, tasks, manifest."""
    graphs = [g for g in manifest["graphs"] if g["precision"] == precision]
    weights = {w for g in graphs for w in g.get("external_data", [])}
    graph_bytes = sum(g["bytes"] for g in graphs) + sum((bundle / w).stat().st_size for w in weights)
    other = sum((bundle / f).stat().st_size for f in ("tokenizer.json", "tasks.json", "manifest.json"))
    return {"graphs": [g["path"] for g in graphs], "graph_mb": round(graph_bytes / 1e6, 3),
            "size_mb": round((graph_bytes + other) / 1e6, 3)}


def quantized_checks(validation: dict, precision: str) -> list[dict]:
    keep = ("graph", "top1_agreement", "min_top1", "metric_drop_points", "budget_points", "passed")
    return [{k: c[k] for k in keep if k in c} for c in validation.get("checks", [])
            if c.get("check") == "quantized_vs_fp32" and c.get("precision") == precision]


def failed_precision(message: str) -> str | None:
    """Which quantized precision an export validation error names (its graph file)."""
    return next((p for p in ("int8", "int4") if f".{p}." in message), None)


def child_train(job_dir: Path, spec: dict, progress: bool) -> dict:
    import gc

    from alter_edge.config import TrainConfig
    from alter_edge.training.trainer import run_training

    cfg = TrainConfig.from_dict(spec["train_config"])
    ckpt = job_dir / "checkpoint"
    resumed = (ckpt / "state.json").is_file()
    data = Path(spec["data"]) if spec["data"] else None
    state = run_training(data, ckpt, cfg, resume=resumed, progress=progress)
    params = state.get("parameters", {})
    gc.collect()  # the training model goes before the checkpoint is loaded for scoring
    return {"trainable_params": sum(params.get(g, 0) for g in trained_groups(cfg)), "parameters": params,
            "train_s": state.get("seconds"), "train_dtype": state.get("compute_dtype"),
            "cache": state.get("cache"), "resumed": resumed,
            "train_evals": state.get("evals", {}),
            "eval": score_checkpoint(ckpt, Path(spec["eval_data"]), spec["eval_dtype"], progress)}


def child_export(job_dir: Path, spec: dict, progress: bool) -> dict:
    from alter_edge.data import load_jsonl
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint
    from alter_edge.export.validate import ExportValidationError

    ckpt = Path(spec["checkpoint"])
    out: dict = {"source": {"row": spec["source_row"], "seed": spec["source_seed"], "checkpoint": str(ckpt)}}
    out["pytorch"] = spec.get("pytorch_eval") or score_checkpoint(ckpt, Path(spec["eval_data"]), "float32",
                                                                   progress)
    t0 = time.perf_counter()
    out["precisions"] = {}
    rows = load_jsonl(spec["eval_data"])
    for name, extra, precisions in EXPORT_BUNDLES:
        bundle = job_dir / name
        gates = {**spec["export_options"], **extra}
        gate_failures: dict[str, str] = {}
        while True:
            opts = {"tasks": None, "int8": True, "int4": True,
                    "data": Path(spec["data"]) if spec["data"] else None, **gates, "overwrite": True,
                    "progress": progress}
            try:
                export_checkpoint(ckpt, bundle, ExportOptions(**opts))
                break
            except ExportValidationError as e:
                p = failed_precision(str(e))
                if p is None or p in gate_failures:  # fp32 parity, or a lifted gate failing: no bundle
                    out["error"] = f"export ({name}) failed: {e}"
                    return out
                gate_failures[p] = str(e)
                gates.update(LIFTED_GATES[p])
                logging.getLogger("results").warning("%s failed the export's gates (%s); exporting it again "
                                                     "with the gates lifted to measure it", p, e)
        if name == EXPORT_BUNDLES[0][0]:
            out["export_s"] = round(time.perf_counter() - t0, 1)
            out["export_options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()}
        manifest = read_json(bundle / "manifest.json", ResultsError)
        validation = read_json(bundle / "validation.json", ResultsError)
        for p, label in precisions.items():
            rec = {**score_bundle(bundle, p, rows, spec.get("threads"), progress),
                   **precision_size(manifest, bundle, p)}
            if p != "fp32":
                rec["validation"] = quantized_checks(validation, p)
                rec["gate_failure"] = gate_failures.get(p)
                rec["method"] = f"MatMulNBits {8 if p == 'int8' else 4}-bit, block-wise"
            out["precisions"][label] = rec
    return out


def child_main(job_dir: Path, quiet: bool) -> int:
    """Run one job (``job.json``) and write ``result.json``; the parent reads it."""
    t0 = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = read_json(job_dir / "job.json", ResultsError)
    run = child_export if spec["kind"] == EXPORT else child_train
    res = run(job_dir, spec, not quiet)
    from alter_edge.runtime.bench import peak_rss_mb  # late: onnxruntime's import is not the row's

    res = {"spec": spec, "row": spec["row"], "seed": spec.get("seed"), **res,
           "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time(), 1),
           "peak_rss_mb": round(peak_rss_mb(), 1), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(job_dir / "result.json", json.dumps(res, indent=2) + "\n")
    return 0


def run_child(job: Job, quiet: bool) -> tuple[dict | None, str | None]:
    """Run ``job`` in a fresh Python process (its own wall time and peak RSS)."""
    atomic_write_text(job.dir / "job.json", json.dumps(job.spec, indent=2) + "\n")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_job", str(job.dir)] + (["--quiet"] if quiet else [])
    env = {**CHILD_ENV, **os.environ}
    proc = subprocess.run(cmd, env=env)
    path = job.dir / "result.json"
    if proc.returncode != 0 or not path.is_file():
        return None, f"{job.name}: the child process exited with status {proc.returncode} (its output is above)"
    res = read_json(path, ResultsError)
    if spec_diff(res.get("spec", {}), job.spec):
        return None, f"{job.name}: the child wrote a result for another spec"
    return res, None


# -- k-fold cross-validation ----------------------------------------------------------------

def fold_of(rows: list, k: int, seed: int) -> list[int]:
    """Each row's fold, 0..k-1: each task's rows shuffled (seeded) and dealt round-robin, so every
    fold holds about 1/k of every task."""
    import numpy as np

    fold = [0] * len(rows)
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_task.setdefault(r.task, []).append(i)
    rng = np.random.default_rng([seed, 4111])
    for task in sorted(by_task):
        idx = by_task[task]
        for j, i in enumerate(rng.permutation(len(idx))):
            fold[idx[i]] = j % k
    return fold


def write_folds(out: Path, rows: list, k: int, seed: int) -> tuple[list, list[tuple[Path, Path]]]:
    """``OUT/folds/fold{f}-train.jsonl`` and ``-test.jsonl`` for each fold; returns the scored rows
    in the order the combined predictions take (fold 0's test rows, then fold 1's, ...) and the
    (train, test) files. Files are rewritten only when their content changes."""
    if k < 2:
        raise ResultsError(f"--folds needs at least 2 folds, got {k}")
    if len({r.task for r in rows}) and min(sum(r.task == t for r in rows) for t in {r.task for r in rows}) < k:
        raise ResultsError(f"--folds {k}: a task has fewer than {k} train rows")
    fold = fold_of(rows, k, seed)
    d = out / CV_DIR
    d.mkdir(parents=True, exist_ok=True)
    files, scored = [], []
    for f in range(k):
        test = [r for r, x in zip(rows, fold, strict=True) if x == f]
        train = [r for r, x in zip(rows, fold, strict=True) if x != f]
        pair = (d / f"fold{f}-train.jsonl", d / f"fold{f}-test.jsonl")
        for path, part in zip(pair, (train, test), strict=True):
            text = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in part)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                atomic_write_text(path, text)
        files.append(pair)
        scored += test
    return scored, files


def combine_folds(row: str, seed: int, runs: list[dict], fold_dirs: list[Path], scored: list, out: Path) -> dict:
    """One (row, seed)'s K fold runs as one run scored on every train row: per-row predictions in
    the order of ``scored`` (``OUT/dev.jsonl``), per-task scores recomputed from them, label
    scoring weighted by each fold's rows; training seconds, wall time and CPU seconds summed, peak memory the
    highest. Written to ``OUT/<row>-s<seed>/result.json`` (with its ``tasks.json``), where
    benchmarks/paired.py reads it."""
    import shutil

    from alter_edge.metrics import overall_score, row_metric
    from alter_edge.tasks import TaskRegistry

    ckpt = fold_dirs[0] / "checkpoint"
    tasks = TaskRegistry.load(ckpt / "tasks.json")
    kinds = {t.name: t.kind for t in tasks}
    preds = [p for r in runs for p in r["eval"]["predictions"]]
    per_task = row_scores_by_task(scored, preds, kinds, row_metric)
    counts = {t: sum(r.task == t for r in scored) for t in per_task}
    ls: dict[str, float] = {}
    for r in runs:
        for t, v in r["eval"]["label_scoring"].items():
            ls[t] = ls.get(t, 0.0) + v * r["eval"]["counts"][t] / counts[t]
    ev = {"per_task": per_task, "overall": overall_score(per_task, tasks.groups()), "label_scoring": ls,
          "counts": counts, "seconds": sum(r["eval"]["seconds"] for r in runs), "predictions": preds}
    res = {"spec": {"kind": "cv", "row": row, "seed": seed, "folds": [r["spec"] for r in runs]},
           "row": row, "seed": seed, "eval": {**summarize_eval(ev, tasks.groups(), scored, kinds),
                                                "predictions": preds, "dtype": runs[0]["eval"].get("dtype")},
           "trainable_params": runs[0]["trainable_params"], "parameters": runs[0]["parameters"],
           "train_s": round(sum(r["train_s"] or 0.0 for r in runs), 1), "wall_s": round(sum(r["wall_s"] for r in runs), 1),
           "cpu_s": round(sum(r["cpu_s"] for r in runs), 1) if all("cpu_s" in r for r in runs) else None,
           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
           "fold_overall": [r["eval"]["overall"] for r in runs], "train_evals": {}}
    d = out / f"{row}-s{seed}"
    old = d / "result.json"
    if old.is_file() and read_json(old, ResultsError).get("spec", {}).get("kind") != "cv":
        raise ResultsError(f"{d} holds a dev-split result; --folds writes its own: choose another --out")
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(ckpt / "tasks.json", d / "tasks.json")
    atomic_write_text(old, json.dumps(res, indent=2) + "\n")
    return res


# -- the table ------------------------------------------------------------------------------

def mean_std(values: list[float]) -> dict:
    vals = [float(v) for v in values]
    return {"mean": round(statistics.mean(vals), 4),
            "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0, "n": len(vals)}


def stage2_deltas(runs: list[dict]) -> list[float]:
    """Per run, what stage 2 moved the dev score: training's own dev evaluation after stage 2
    minus after stage 1 (empty unless every run has both: one-stage rows and zero_shot do not)."""
    evals = [r.get("train_evals") or {} for r in runs]
    if not runs or not all({"stage1", "stage2"} <= set(e) for e in evals):
        return []
    return [e["stage2"]["overall"] - e["stage1"]["overall"] for e in evals]


def summarize_row(name: str, runs: list[dict]) -> dict:
    evs = [r["eval"] for r in runs]
    deltas = stage2_deltas(runs)
    tasks = sorted({t for e in evs for t in e["per_task"]})
    ls_tasks = sorted({t for e in evs for t in e["label_scoring"]})
    return {
        "row": name, "what": ROWS[name][1], "seeds": [r["seed"] for r in runs],
        "per_task": {t: mean_std([e["per_task"][t] for e in evs if t in e["per_task"]]) for t in tasks},
        "label_scoring": {t: mean_std([e["label_scoring"][t] for e in evs if t in e["label_scoring"]])
                          for t in ls_tasks},
        "overall": mean_std([e["overall"] for e in evs]),
        "overall_ls": mean_std([e["overall_ls"] for e in evs]),
        "overall_char": mean_std([e["overall_char"] for e in evs]) if all("overall_char" in e for e in evs) else None,
        "stage2_delta": mean_std(deltas) if deltas else None,
        "trainable_params": runs[0]["trainable_params"],
        "train_s": mean_std([r["train_s"] or 0.0 for r in runs]),
        "wall_s": mean_std([r["wall_s"] for r in runs]),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "runs": runs,
    }


def fmt(ms: dict | None, std: bool = True) -> str:
    if not ms:
        return "-"
    return f"{ms['mean']:.3f} ± {ms['std']:.3f}" if std and ms["n"] > 1 else f"{ms['mean']:.3f}"


def markdown(res: dict) -> str:
    meta = res["meta"]
    lines = ["# alter-edge quality table", ""]
    if meta["quick"]:
        lines += ["> **QUICK RUN**: a smoke-test budget (`--quick`), not a result. Do not quote these "
                  "numbers.", ""]
    split, budget, m = meta["split"], meta["budget"], meta["machine"]
    commit = meta.get("git") or {}
    lines += [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; commit {commit.get('commit', 'unknown')[:12]}"
        f"{' (uncommitted changes)' if commit.get('dirty') else ''}  ",
        f"Machine: {m.get('cpu')}, {m.get('cpu_count')} CPUs, {m.get('memory_gb', '?')} GB; "
        f"load average at start {m.get('load_average_start', '?')}  ",
        f"Data: `{meta['data']}` (sha256 {str(meta['data_sha256'])[:12]}); base model `{meta['base_model']}`  ",
        f"Dev split: `stratified_split`, split_seed {split['split_seed']}, dev_fraction "
        f"{split['dev_fraction']}: {sum(split['dev_rows'].values())} dev rows "
        f"({', '.join(f'{t} {n}' for t, n in split['dev_rows'].items())}); scored: "
        f"{sum(split['eval_rows'].values())} rows  ",
        *([f"**{meta['folds']}-fold cross-validation** over the {split['train_rows']} train rows (stratified "
           f"by task): each (row, seed) trained {meta['folds']} times, each time scored on the fold it did not "
           "train on; every train row scored once (the dev split above is not used)  "] if meta.get("folds") else []),
        f"Budget per trained row: {budget['steps']} optimizer steps x batch {budget['batch_size']} = "
        f"{budget['examples']} examples (two-stage rows: {budget['stage1_steps']} + {budget['stage2_steps']}); "
        f"seeds {meta['seeds']}; scored in {meta['eval_dtype']}",
        "",
    ]
    rows = res["rows"]
    tasks = sorted({t for r in rows for t in r["per_task"]})
    ls_tasks = sorted({t for r in rows for t in r["label_scoring"]})
    head = ["row", *tasks, "overall", *[f"{t} (ls)" for t in ls_tasks], "overall (ls)", "overall (char)", "stage 2 Δ",
            "trainable", "train s", "peak MB", "seeds"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r.get("stage2_delta")
        cells = [r["row"], *[fmt(r["per_task"].get(t), std=False) for t in tasks], f"**{fmt(r['overall'])}**",
                 *[fmt(r["label_scoring"].get(t), std=False) for t in ls_tasks], fmt(r["overall_ls"]),
                 fmt(r.get("overall_char")), f"{d['mean']:+.3f}" if d else "-", f"{r['trainable_params']:,}", f"{r['train_s']['mean']:.0f}", f"{r['peak_rss_mb']:.0f}",
                 str(len(r["seeds"]))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per-task cells: mean over seeds (generation: exact match for classify tasks, ROUGE-L F1 "
              "for generate tasks); `(ls)`: label scoring. overall: mean over task groups, mean ± std "
              "over seeds. overall (char): the authors' metric, generate tasks by ROUGE-L on characters "
              "(alter_edge/rouge.py), classify tasks by exact match. stage 2 Δ (two-stage rows): training's own dev evaluation after stage 2 "
              "minus after stage 1, mean over seeds. train s: the training run (prefix cache, stages, its own dev evaluations); "
              "peak MB: the row's process (training + scoring).", ""]
    lines += [f"- `{r['row']}`: {r['what']}" for r in rows]
    if meta.get("not_run"):
        lines += ["", f"Not run (`--report-only` tabulates finished runs only): {', '.join(meta['not_run'])}"]
    ex = res.get("export")
    if ex:
        lines += ["", f"## Export: `{ex['source']['row']}` seed {ex['source']['seed']} through the runtime", ""]
        if ex.get("error"):
            lines.append(f"**Export failed**: {ex['error']}")
        head = ["model", *tasks, "overall", *[f"{t} (ls)" for t in ls_tasks], "overall (ls)", "size MB",
                "top-1 vs fp32", "gates"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        entries = [("PyTorch fp32 (checkpoint)", ex["pytorch"], None)]
        entries += [(f"runtime {p}", rec, rec) for p, rec in ex.get("precisions", {}).items()]
        for label, ev, rec in entries:
            gate = "-"
            if rec is not None and rec.get("gate_failure"):
                gate = "FAILED the default gates (measured with them lifted): " + rec["gate_failure"]
            elif rec is not None and rec.get("validation"):
                gate = "passed"
            cells = [label, *[f"{ev['per_task'].get(t, float('nan')):.3f}" for t in tasks], f"**{ev['overall']:.3f}**",
                     *[f"{ev['label_scoring'].get(t, float('nan')):.3f}" for t in ls_tasks],
                     f"{ev['overall_ls']:.3f}", f"{rec['size_mb']:.1f}" if rec else "-",
                     f"{rec['validation'][-1]['top1_agreement']:.3f}" if rec and rec.get("validation") else "-",
                     gate.replace("|", "/")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Export + validation {ex.get('export_s', '?')} s; peak {ex.get('peak_rss_mb', '?')} MB. "
                  "size MB: that precision's graph(s), their weight file, tokenizer.json, tasks.json, "
                  "manifest.json. top-1 vs fp32: the export's check (argmax agreement with the fp32 graph "
                  "along its greedy path on the validation prompts). int8: block-wise 8-bit MatMulNBits; "
                  "int4: 4-bit."]
    if res.get("failed"):
        lines += ["", "## Failed", ""] + [f"- {f}" for f in res["failed"]]
    if res.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in res["plots"]]
    return "\n".join(lines) + "\n"


def write_plots(out: Path, res: dict) -> list[str]:
    """per_task.png (grouped bars, seed std as error bars) and export_size.png (score vs bundle
    size per precision). matplotlib is imported here only (the `bench` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def save(fig, name: str) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(out / name, buf.getvalue())
        return name

    written = []
    rows = res["rows"]
    if rows:
        tasks = sorted({t for r in rows for t in r["per_task"]})
        cols = [*tasks, "overall", "overall (ls)"]
        x = np.arange(len(cols))
        width = 0.8 / len(rows)
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cols) + 0.25 * len(rows) * len(cols) / 2), 4.2))
        # tab10 repeats after 10 rows, which makes two rows look like one; tab20 has 20 colours
        palette = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20").colors
        for i, r in enumerate(rows):
            cells = [r["per_task"].get(t) for t in tasks] + [r["overall"], r["overall_ls"]]
            means = [c["mean"] if c else 0.0 for c in cells]
            errs = [c["std"] if c else 0.0 for c in cells]
            fewer = len(r["seeds"]) < len(res["meta"]["seeds"])  # --report-only: rows may lack seeds
            label = r["row"] + (f" ({len(r['seeds'])} of {len(res['meta']['seeds'])} seeds)" if fewer else "")
            ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=errs, capsize=2, label=label,
                   color=palette[i % len(palette)])
        ax.set_xticks(x, cols, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("dev score")
        ax.set_title("Dev scores by method" + (" (QUICK RUN)" if res["meta"]["quick"] else "")
                     + f", mean ± std over seeds {res['meta']['seeds']}", fontsize=9)
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
        written.append(save(fig, "per_task.png"))
    ex = res.get("export")
    if ex and ex.get("precisions"):
        fig, ax = plt.subplots(figsize=(6, 4))
        precs = ex["precisions"]
        sizes = [precs[p]["size_mb"] for p in precs]
        for key, marker, label in (("overall", "o", "overall (generation)"), ("overall_ls", "s", "overall (label scoring)")):
            ax.plot(sizes, [precs[p][key] for p in precs], marker=marker, linestyle="-", label=label)
            ax.axhline(ex["pytorch"][key], linestyle="--", linewidth=0.8, color="grey")
        # labels of precisions close in size (int8, int8_dynamic) go on alternate sides
        for j, (p, s) in enumerate(sorted(zip(precs, sizes, strict=True), key=lambda x: x[1])):
            ax.annotate(p + (" (gates failed)" if precs[p].get("gate_failure") else ""),
                        (s, precs[p]["overall"]), textcoords="offset points",
                        xytext=(4, (8, -14, 22)[j % 3]), fontsize=8)
        ax.set_xlabel("bundle size, MB (graphs of that precision + tokenizer)")
        ax.set_ylabel("dev score through the runtime")
        ax.set_title(f"{ex['source']['row']} seed {ex['source']['seed']}: score vs size "
                     "(dashed: PyTorch fp32)" + (" (QUICK RUN)" if res["meta"]["quick"] else ""), fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        written.append(save(fig, "export_size.png"))
    return written


# -- main -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="JSONL task file (default: the built-in mix)")
    ap.add_argument("--out", type=Path, default=Path("runs/results"))
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    ap.add_argument("--rows", nargs="+", default=list(ALL_ROWS), metavar="ROW",
                    help=f"subset of: {' '.join(ALL_ROWS)} (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke budget: {QUICK_CONFIG}, {QUICK_EVAL_PER_TASK} dev rows per task, one seed")
    ap.add_argument("--base-model", default=None, help="built-in name, local HF directory or Hub id")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a TrainConfig field for every row, e.g. --set stage1_steps=300 "
                         "--set 'mta={\"lora_rank\": 8}'")
    ap.add_argument("--export-set", action="append", default=[], metavar="KEY=JSON",
                    help="override an ExportOptions field of the export row, e.g. --export-set int8_budget=15")
    ap.add_argument("--eval-per-task", type=int, default=None,
                    help="score at most N dev rows per task (default: the whole dev split; --quick: "
                         f"{QUICK_EVAL_PER_TASK})")
    ap.add_argument("--eval-dtype", choices=["float32", "bfloat16", "auto"], default="float32",
                    help="dtype of the PyTorch scoring (float32: the reference the runtime is compared to; "
                         "auto: bfloat16 where the CPU has native bf16, else float32; each run records "
                         "the dtype it used)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads when scoring bundles")
    ap.add_argument("--folds", type=int, default=0, metavar="K",
                    help="k-fold cross-validation over the train split instead of the dev split: each row's "
                         "seed trains K times, each on all train rows but one fold, and is scored on that fold; "
                         "every train row is scored once (paired rows for benchmarks/paired.py). Folds are "
                         f"stratified by task; training's own dev split then defaults to {CV_CONFIG}")
    ap.add_argument("--only-folds", type=int, nargs="+", default=None, metavar="F",
                    help="with --folds: train only these folds (0-based); the others are reused when finished "
                         "and listed as not run otherwise (two processes may split the folds of one --out)")
    ap.add_argument("--report-only", action="store_true",
                    help="train and export nothing: tabulate the finished (row, seed) runs in --out and "
                         "list the missing ones")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--_job", type=Path, default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args._job is not None:
        return child_main(args._job, args.quiet)
    bad = [r for r in args.rows if r not in ALL_ROWS]
    if bad:
        ap.error(f"unknown row(s) {', '.join(bad)}; allowed: {', '.join(ALL_ROWS)}")
    rows = [r for r in ALL_ROWS if r in args.rows]  # table order, no repeats
    if args.folds:  # cross-validation scores training runs; the export row exports one dev-split run
        rows = [r for r in rows if r != EXPORT]
    if args.only_folds is not None and not all(0 <= f < args.folds for f in args.only_folds):
        ap.error(f"--only-folds takes folds 0..{args.folds - 1} of --folds {args.folds}, got {args.only_folds}"
                 if args.folds else "--only-folds needs --folds K")
    if EXPORT in rows and not any(r in MTA_ROWS for r in rows):
        ap.error(f"--rows {EXPORT} exports the best of {', '.join(MTA_ROWS)}: name at least one of them")
    try:
        return run_table(args, rows, argv)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run_table(args, rows: list[str], argv: list[str] | None) -> int:
    from tqdm.auto import tqdm

    from alter_edge.config import TrainConfig
    from alter_edge.data import task_counts, write_jsonl
    from alter_edge.errors import AlterEdgeError
    from alter_edge.training.trainer import load_data

    seeds = list(dict.fromkeys(args.seeds or ([0] if args.quick else [0, 1, 2])))
    base = {**(CV_CONFIG if args.folds else {}), **(QUICK_CONFIG if args.quick else {}), **parse_sets(args.set, "--set")}
    if args.base_model:
        base["base_model"] = args.base_model
    export_over = {**(QUICK_EXPORT if args.quick else {}), **parse_sets(args.export_set, "--export-set")}
    per_task = args.eval_per_task if args.eval_per_task is not None else (QUICK_EVAL_PER_TASK if args.quick else 0)
    try:
        base_cfg = TrainConfig(**base)
        configs = {(r, s): row_config(r, s, base, args.quick) for r in rows if r != EXPORT
                   for s in (seeds[:1] if r == "zero_shot" else seeds)}  # zero_shot: deterministic
        from alter_edge.export.pipeline import ExportOptions

        ExportOptions(**export_over)
        data = args.data.resolve() if args.data else None
        train_rows, dev, source = load_data(data, base_cfg)
    except (AlterEdgeError, TypeError) as e:
        raise ResultsError(str(e)) from e
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    fold_files: list[tuple[Path, Path]] = []
    if args.folds:  # every train row scored once, in its own fold
        scored, fold_files = write_folds(out, train_rows, args.folds, base_cfg.split_seed)
    else:
        scored = eval_rows(dev, per_task)
    eval_path = out / "dev.jsonl"
    if not eval_path.is_file() or eval_path.read_text(encoding="utf-8") != "".join(
            json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in scored):
        write_jsonl(eval_path, [r.to_dict() for r in scored])
    data_sha = sha256_file(data) if data else "built-in"
    common = {"data": str(data) if data else None, "data_sha256": data_sha, "eval_data": str(eval_path),
              "eval_sha256": sha256_file(eval_path), "eval_dtype": args.eval_dtype, "quick": args.quick}
    jobs = [Job(r, s, out / f"{r}-s{s}", {"kind": "train", "row": r, "seed": s, **common,
                                          "train_config": configs[(r, s)].to_dict()})
            for s in seeds for r in rows if (r, s) in configs and not args.folds]
    jobs += [Job(r, s, out / CV_DIR / f"{r}-s{s}-f{f}",
                 {"kind": "train", "row": r, "seed": s, "fold": f, **common, "data": str(tr),
                  "data_sha256": sha256_file(tr), "eval_data": str(te), "eval_sha256": sha256_file(te),
                  "train_config": configs[(r, s)].to_dict()}, f)
             # fold-major (every row's fold 0, then fold 1, ...): a partly done run already holds paired folds
             for s in seeds for f, (tr, te) in enumerate(fold_files) for r in rows if (r, s) in configs]
    done: dict[tuple[str, int, int | None], dict] = {}
    for job in jobs:  # a folder made with other settings fails here, before anything runs
        res = job.finished()
        if res is not None:
            done[(job.row, job.seed, job.fold)] = res
    meta = {
        "command": "python benchmarks/results.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": git_commit(),
        "machine": machine_info(), "child_env": {**CHILD_ENV, **{k: os.environ[k] for k in CHILD_ENV if k in os.environ}},
        "quick": args.quick, "seeds": seeds, "rows": rows,
        "data": source, "data_sha256": data_sha, "base_model": base_cfg.base_model, "eval_dtype": args.eval_dtype,
        "set": base, "export_set": export_over,
        "budget": {"stage1_steps": base_cfg.stage1_steps, "stage2_steps": base_cfg.stage2_steps,
                   "steps": base_cfg.stage1_steps + base_cfg.stage2_steps, "batch_size": base_cfg.batch_size,
                   "examples": (base_cfg.stage1_steps + base_cfg.stage2_steps) * base_cfg.batch_size},
        "split": {"how": "alter_edge.data.stratified_split (training.trainer.load_data)",
                  "split_seed": base_cfg.split_seed, "dev_fraction": base_cfg.dev_fraction,
                  "train_rows": len(train_rows), "dev_rows": task_counts(dev), "eval_rows": task_counts(scored),
                  "eval_per_task": per_task or "all", "eval_file": str(eval_path)},
        "report_only": args.report_only, "not_run": [],
        "folds": args.folds or None,
    }
    failed: list[str] = []
    bar = tqdm(total=len(jobs) + int(EXPORT in rows), desc="results", unit="run", disable=args.quiet)
    for job in jobs:
        res = done.get((job.row, job.seed, job.fold))
        reused = res is not None
        if not reused and (args.report_only or (args.only_folds is not None and job.fold not in args.only_folds)):
            meta["not_run"].append(job.name)
            bar.update()
            continue
        if not reused:
            res, err = run_child(job, args.quiet)
            if err:
                failed.append(err)
                tqdm.write(f"FAILED {err}")
                bar.update()
                continue
            done[(job.row, job.seed, job.fold)] = res
        res["reused"] = reused
        ev = res["eval"]
        tqdm.write(f"{job.name:<18} overall {ev['overall']:.3f} (label scoring {ev['overall_ls']:.3f})  "
                   + "  ".join(f"{t} {v:.3f}" for t, v in ev["per_task"].items())
                   + f"  | {res['trainable_params']:,} trainable, train {res['train_s'] or 0:.0f} s, "
                   f"peak {res['peak_rss_mb']:.0f} MB" + ("  [reused]" if reused else ""))
        bar.update()
    if args.folds:  # a (row, seed) counts once all its folds are done
        folds = range(len(fold_files))
        runs_of = {(r, s): combine_folds(r, s, [done[(r, s, f)] for f in folds],
                                         [out / CV_DIR / f"{r}-s{s}-f{f}" for f in folds], scored, out)
                   for (r, s) in configs if all((r, s, f) in done for f in folds)}
    else:
        runs_of = {(r, s): res for (r, s, _), res in done.items()}
    table = [summarize_row(r, [runs_of[(r, s)] for s in seeds if (r, s) in runs_of])
             for r in rows if r != EXPORT and any((r, s) in runs_of for s in seeds)]
    export = None
    if EXPORT in rows:
        export = run_export(args, seeds, table, out, common, export_over, failed, meta["not_run"])
        bar.update()
    bar.close()
    meta["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"meta": meta, "rows": table, "export": export, "failed": failed}
    report["plots"] = write_plots(out, report)
    atomic_write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    atomic_write_text(out / "results.md", md)
    print(md)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}" + "".join(f", {out / p}" for p in report["plots"]))
    return 1 if failed else 0


def run_export(args, seeds, table, out: Path, common: dict, export_over: dict, failed: list,
               not_run: list) -> dict | None:
    complete = [r for r in table if r["row"] in MTA_ROWS and len(r["seeds"]) == len(seeds)]
    if not complete and args.report_only:  # a row with the first seed finished may have exported already
        complete = [r for r in table if r["row"] in MTA_ROWS and seeds[0] in r["seeds"]]
    if not complete:
        failed.append(f"{EXPORT}: no MTA row finished all seeds; nothing to export")
        return None
    best = max(complete, key=lambda r: r["overall"]["mean"])
    src = next(run for run in best["runs"] if run["seed"] == seeds[0])
    spec = {"kind": EXPORT, "row": EXPORT, "source_row": best["row"], "source_seed": seeds[0],
            "source_spec": src["spec"], "checkpoint": str(out / f"{best['row']}-s{seeds[0]}" / "checkpoint"),
            "data": common["data"], "eval_data": common["eval_data"], "eval_sha256": common["eval_sha256"],
            "export_options": export_over, "bundles": [[n, e] for n, e, _ in EXPORT_BUNDLES],
            "threads": args.threads, "quick": args.quick,
            "pytorch_eval": src["eval"] if src["eval"].get("dtype") == "float32" else None}
    job = Job(EXPORT, seeds[0], out / EXPORT, spec)
    res = job.finished()
    reused = res is not None
    if not reused and args.report_only:
        not_run.append(f"{EXPORT} (of {best['row']}-s{seeds[0]})")
        return None
    if not reused:
        res, err = run_child(job, args.quiet)
        if err:
            failed.append(err)
            return None
    res["reused"] = reused
    if res.get("error"):
        failed.append(f"{EXPORT}: {res['error']}")
    line = "  ".join(f"{p} {r['overall']:.3f}/{r['overall_ls']:.3f} {r['size_mb']:.1f} MB"
                     + (" (gates failed)" if r.get("gate_failure") else "")
                     for p, r in res.get("precisions", {}).items())
    print(f"export of {best['row']}-s{seeds[0]}: PyTorch {res['pytorch']['overall']:.3f}/"
          f"{res['pytorch']['overall_ls']:.3f}  {line}" + ("  [reused]" if reused else ""), flush=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
