"""Where one decode step's time goes: onnxruntime's profiler on a graph, through the runtime.

    python benchmarks/step_profile.py GRAPH [GRAPH ...] --kv runs/decode-bench/plain/kv.json \\
        --steps 64 --threads 2

For each graph (a bundle graph takes its KV layout from the bundle's manifest.json beside it;
otherwise pass ``--kv``), runs a 32-token prompt and ``--steps`` one-token steps at batch 1
through ``GraphRunner.step`` with profiling on (``--batch N``: N copies of the prompt; the prompt fed one token a step, so
onnxruntime-genai's graphs, whose logits cover every position, run too), then prints per decode step: the Python wall
time of ``step`` (binding, run, reading logits), onnxruntime's ``model_run`` time, the summed
kernel time of its nodes, and the kernel time by operator type (top ten). Wall minus kernel
time is what the runtime and onnxruntime's executor add around the kernels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from alter_edge.runtime.contract import KVLayout
from alter_edge.runtime.session import GraphRunner, session_options


def profile(graph: Path, kv: KVLayout, steps: int, threads: int, task_id: int | None, batch: int = 1) -> dict:
    so = session_options(threads)
    prefix = Path(tempfile.mkdtemp()) / "profile"
    so.enable_profiling = True
    so.profile_file_prefix = str(prefix)
    runner = GraphRunner(graph, kv, so, ["CPUExecutionProvider"])
    prompt = np.tile(np.arange(100, 132, dtype=np.int64)[None, :], (batch, 1))
    tids = None if task_id is None else np.full(batch, task_id, np.int64)
    walls = []
    for _ in range(2):  # the second pass is timed; the first warms up
        cache = runner.new_cache(batch, prompt.shape[1] + steps + 1)
        for j in range(prompt.shape[1]):  # token by token: a graph whose logits cover every position works too
            lengths = np.full(batch, j + 1, np.int64)
            logits = runner.step(prompt[:, j:j + 1], lengths, tids, cache)
        walls = []
        for _ in range(steps):
            tok = logits[:, 0].argmax(-1)[:, None]
            lengths = lengths + 1
            t0 = time.perf_counter()
            logits = runner.step(tok, lengths, tids, cache, copy=False)  # as the decode loop reads it
            walls.append(time.perf_counter() - t0)
    trace = json.loads(Path(runner.session.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"]
    decode_runs = runs[-steps:]  # the timed pass's decode steps
    lo, hi = decode_runs[0]["ts"], decode_runs[-1]["ts"] + decode_runs[-1]["dur"]
    kernel = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
              and lo <= e["ts"] <= hi]
    by_op: dict[str, float] = defaultdict(float)
    for e in kernel:
        by_op[e["args"].get("op_name", "?")] += e["dur"]
    n = len(decode_runs)
    return {
        "graph": str(graph), "batch": batch, "steps": n, "nodes_run_per_step": round(len(kernel) / n),
        "wall_ms_per_step": round(1000 * statistics.median(walls), 3),
        "model_run_ms_per_step": round(statistics.median(r["dur"] for r in decode_runs) / 1000, 3),
        "kernel_ms_per_step": round(sum(e["dur"] for e in kernel) / n / 1000, 3),
        "by_op_ms_per_step": {k: round(v / n / 1000, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:10]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("graphs", nargs="+", type=Path)
    ap.add_argument("--kv", type=Path, default=None, help="KV layout JSON for a graph outside a bundle")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--task-id", type=int, default=0, help="fed to a multi-task graph")
    ap.add_argument("--batch", type=int, default=1, help="rows per step (copies of the prompt)")
    args = ap.parse_args()
    for g in args.graphs:
        manifest = g.parent / "manifest.json"
        kv = KVLayout.from_dict(json.loads(args.kv.read_text()) if args.kv and not manifest.is_file()
                                else json.loads(manifest.read_text())["kv_cache"])
        import onnx

        inputs = {i.name for i in onnx.load(str(g), load_external_data=False).graph.input}
        r = profile(g, kv, args.steps, args.threads, args.task_id if "task_ids" in inputs else None, args.batch)
        print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
