"""Export benchmark on SmolLM2-135M with a random-adapter lora checkpoint.

Measures: export + validation wall time (multi-task graph, one per-task graph, int8, int4),
file sizes fp32 / int8 / int4, and greedy latency (64-token prompt + 16 decode steps, batch 1)
of the per-task graph and the multi-task graph against the plain base model exported the same
way, in interleaved rounds (medians, ratios). Reproduce:

    HF_HUB_OFFLINE=1 python benchmarks/export_bench.py --out runs/export-bench \\
        --data ../shared/data/alter-mix/train.jsonl --rounds 5
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
from pathlib import Path

log = logging.getLogger("export_bench")


def make_checkpoint(out: Path, data: Path, top_layers: int, seed: int = 0) -> Path:
    import torch

    from alter_edge.base_model import load_base_model, resolve_base_model
    from alter_edge.config import MTAConfig, TrainConfig
    from alter_edge.data import load_jsonl
    from alter_edge.inject import MTAModel
    from alter_edge.tasks import TaskRegistry
    from alter_edge.training.checkpoint import save_checkpoint

    rows = [r.to_dict() for r in load_jsonl(data)]
    tasks = TaskRegistry.infer(rows)
    base_dir = resolve_base_model("smollm2-135m")
    base, _tok, info = load_base_model(str(base_dir))
    torch.manual_seed(seed)
    cfg = MTAConfig(num_tasks=len(tasks), adapter_kind="lora", num_top_layers=top_layers, init_std=0.002)
    model = MTAModel(base, cfg)
    with torch.no_grad():
        for b in model.blocks.values():
            b.mixture.logits.add_(torch.randn_like(b.mixture.logits) * 0.2)
    tc = TrainConfig(base_model=str(base_dir), stage1_steps=0, stage2_steps=0,
                     mta={"adapter_kind": "lora", "num_top_layers": top_layers})
    save_checkpoint(out, model, tasks, tc, info, {"complete": True, "stage": 2, "step": 0})
    return out


def greedy_seconds(graph, prompt: list[int], task_id: int | None, steps: int) -> float:
    t0 = time.perf_counter()
    graph.greedy([prompt], None if not graph.multitask else [task_id], pad_id=0, max_new_tokens=steps)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/export-bench"))
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--top-layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--no-quant", action="store_true", help="fp32 graphs only (latency and sizes)")
    ap.add_argument("--atol", type=float, default=3e-4,
                    help="fp32 parity tolerance (SmolLM2's 30 layers measured ~1.0e-4 on long prompts)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("root", "onnxruntime", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch
    from transformers import AutoModelForCausalLM

    from alter_edge.export.onnx_export import export_graph
    from alter_edge.export.optimize import optimize_graph
    from alter_edge.export.ortgraph import OrtGraph
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint
    from alter_edge.tasks import TaskRegistry

    args.out.mkdir(parents=True, exist_ok=True)
    ck = args.out / "checkpoint"
    if not (ck / "state.json").is_file():
        make_checkpoint(ck, args.data, args.top_layers)
    tasks = TaskRegistry.load(ck / "tasks.json")
    task = tasks.names[0]
    results: dict = {"task": task, "threads": args.threads, "rounds": args.rounds, "atol": args.atol}

    t0 = time.perf_counter()
    bundle = args.out / "bundle"
    manifest = export_checkpoint(ck, bundle, ExportOptions(
        tasks=task, int8=not args.no_quant, int4=not args.no_quant, data=args.data, heldout_rows=8, overwrite=True, progress=False,
        atol=args.atol))
    results["export_and_validation_seconds"] = round(time.perf_counter() - t0, 1)
    results["sizes_mb"] = {g["path"]: round(g["bytes"] / 1e6, 1) for g in manifest["graphs"]}

    base_path = args.out / "base.onnx"
    if not base_path.is_file():
        base_dir = json.loads((ck / "base_model.json").read_text())["path"]
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        export_graph(base, args.out / "base.raw.onnx", multitask=False)
        optimize_graph(args.out / "base.raw.onnx", base_path)
        del base
    results["sizes_mb"]["base.onnx"] = round(base_path.stat().st_size / 1e6, 1)

    graphs = {"base": base_path, "task_fp32": bundle / f"tasks/{task}/model.onnx", "multi_fp32": bundle / "model.onnx",
              "task_int8": bundle / f"tasks/{task}/model.int8.onnx", "task_int4": bundle / f"tasks/{task}/model.int4.onnx"}
    sessions = {k: OrtGraph(p, threads=args.threads) for k, p in graphs.items() if p.is_file()}
    rng = random.Random(0)
    prompt = [rng.randrange(100, 40000) for _ in range(64)]
    tid = tasks.id_of(task)
    for g in sessions.values():  # warm-up
        greedy_seconds(g, prompt, tid, 2)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        order = list(sessions)
        rng.shuffle(order)  # interleaved A/B: every round runs every graph, in a random order
        for k in order:
            times[k].append(greedy_seconds(sessions[k], prompt, tid, args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    results["latency_median_s"] = {k: round(v, 4) for k, v in med.items()}
    results["latency_ratio_vs_base"] = {k: round(v / med["base"], 3) for k, v in med.items()}
    fp32 = results["sizes_mb"][f"tasks/{task}/model.onnx"]
    results["size_ratio_vs_fp32"] = {p: round(s / fp32, 3) for p, s in results["sizes_mb"].items()
                                     if p.startswith(f"tasks/{task}/")}
    v = json.loads((bundle / "validation.json").read_text())
    results["quantized_checks"] = [
        {k: c.get(k) for k in ("graph", "fp32_rung", "top1_agreement", "metric_drop_points", "passed")}
        for c in v["checks"] if c["check"] == "quantized_vs_fp32"]
    results["max_fp32_abs_diff"] = max(c["max_abs_diff"] for c in v["checks"] if "max_abs_diff" in c)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))  # noqa: T201 (a script's report)


if __name__ == "__main__":
    main()
