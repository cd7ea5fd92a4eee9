"""Decode speed of the JavaScript runtime on onnxruntime-node against the Python runtime, on the
same graph, threads and requests, interleaved (A B A B) in fresh processes.

    python benchmarks/js_bench/js_bench.py BUNDLE [--precision int8] [--threads 2] [--rounds 5]
                                           [--new-tokens 32] [--batches 1 4] [--kv-mode auto]
                                           [--json out.json]

Without BUNDLE a tiny random bundle is made under ``--work`` (the test fixture's: enough to see
that the script runs, meaningless for speed). Each round starts both engines once per batch size,
in an order that alternates each round; each process loads the bundle (default graph: the
multi-task graph), runs one warm-up request and one timed request: the bundle's tasks in turn,
one per row (batch > 1 mixes tasks), the same text in every row, eos ignored. Printed: medians
over rounds of decode tokens/s (all rows' tokens after the first step, per second after it),
time to first token, load time and peak RSS per process, and node/python ratios of the medians.
``--kv-mode`` picks how the JavaScript runtime keeps its KV cache (docs/javascript.md): "shared"
(pre-allocated outputs; onnxruntime-node 1.30 still copies them out after each run) or "copy"
(a new present each step); "auto" is "shared" on onnxruntime-node. Needs node 20+ and
``npm ci --prefix js`` (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE_BENCH = Path(__file__).resolve().parent / "node_bench.mjs"
TEXT = "the quick brown fox jumps over the lazy dog while the answer waits ."


def peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def python_worker(bundle: Path, batch: int, new_tokens: int, threads: int, precision: str | None, text: str) -> dict:
    """The Python runtime's side of one round, in this (fresh) process: what node_bench.mjs does."""
    from alter_edge.runtime import EdgeModel
    from alter_edge.runtime.generate import SamplingParams, decode

    t0 = time.perf_counter()
    model = EdgeModel.load(bundle, threads=threads, precision=precision)
    load_s = time.perf_counter() - t0
    names = model.tasks.names
    tasks = [names[i % len(names)] for i in range(batch)]
    prompts = [model.prompt_ids(text, t)[0] for t in tasks]
    runner = model.runner_for(tasks)
    params = SamplingParams(new_tokens, ignore_eos=True)
    ids = [model.tasks.id_of(t) for t in tasks]

    def timed() -> dict:  # as node_bench.mjs: the first step gives every row one token
        start = time.perf_counter()
        first = step_end = last = None
        tokens = 0
        for _, tok in decode(runner, prompts, ids, model.bundle.eos_id, model.bundle.pad_id, params):
            if tok is None:
                continue
            now = time.perf_counter()
            tokens += 1
            if tokens == 1:
                first = now
            if tokens == batch:
                step_end = now
            last = now
        return {"ttft_s": first - start, "decode_tps": (tokens - batch) / (last - step_end), "tokens": tokens}

    timed()  # warm-up
    r = timed()
    return {"engine": "python", "batch": batch, "new_tokens": new_tokens, "threads": threads,
            "graph": runner.path.name, "load_s": load_s, **r, "peak_rss_mb": peak_rss_mb()}


def run_engine(engine: str, bundle: Path, batch: int, args) -> dict:
    if engine == "node":
        cmd = [args.node, str(NODE_BENCH), str(bundle), "--batch", str(batch), "--new-tokens", str(args.new_tokens),
               "--threads", str(args.threads), "--text", args.text, "--kv-mode", args.kv_mode]
        if args.precision:
            cmd += ["--precision", args.precision]
        cwd = ROOT
    else:
        cmd = [sys.executable, __file__, "--worker", str(bundle), "--batch", str(batch), "--new-tokens",
               str(args.new_tokens), "--threads", str(args.threads), "--text", args.text]
        if args.precision:
            cmd += ["--precision", args.precision]
        cwd = ROOT
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"{engine} batch {batch} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def tiny_bundle(work: Path) -> Path:
    from alter_edge.testing import tiny_bundle as make

    return make(work)[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, nargs="?")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--text", default=TEXT)
    ap.add_argument("--kv-mode", default="auto", choices=["auto", "shared", "copy"])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "js-bench")
    ap.add_argument("--json", type=Path, default=None, help="also write every run and the medians here")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(python_worker(args.bundle, args.batch, args.new_tokens, args.threads, args.precision,
                                       args.text)))
        return
    args.node = shutil.which("node")
    if args.node is None or not (ROOT / "js" / "node_modules").is_dir():
        raise SystemExit("js_bench needs node 20+ on PATH and js/node_modules (scripts/setup.sh runs npm ci in js/)")
    bundle = args.bundle or tiny_bundle(args.work)
    runs: list[dict] = []
    for r in range(args.rounds):
        order = ["node", "python"] if r % 2 == 0 else ["python", "node"]
        for batch in args.batches:
            for engine in order:
                out = run_engine(engine, bundle, batch, args)
                out["round"] = r
                runs.append(out)
                print(f"round {r} {engine:6s} batch {batch}: {out['decode_tps']:.1f} tok/s, "
                      f"ttft {out['ttft_s'] * 1000:.1f} ms, load {out['load_s']:.2f} s, graph {out['graph']}",
                      flush=True)
    medians = {}
    for batch in args.batches:
        for engine in ("node", "python"):
            rs = [x for x in runs if x["engine"] == engine and x["batch"] == batch]
            medians[f"{engine} b{batch}"] = {k: statistics.median(x[k] for x in rs)
                                            for k in ("decode_tps", "ttft_s", "load_s", "peak_rss_mb")
                                            if all(x.get(k) is not None for x in rs)}
    print(f"\n{bundle} precision {args.precision or 'default'}, {args.threads} threads, {args.new_tokens} new tokens, "
          f"{args.rounds} rounds (medians), node kv mode {runs[0].get('kv_mode') or args.kv_mode}")
    print(f"{'engine':12s} {'decode tok/s':>12s} {'ttft ms':>9s} {'load s':>7s} {'peak RSS MB':>12s}")
    for name, m in medians.items():
        print(f"{name:12s} {m['decode_tps']:12.1f} {m['ttft_s'] * 1000:9.1f} {m['load_s']:7.2f} "
              f"{m.get('peak_rss_mb', float('nan')):12.0f}")
    for batch in args.batches:
        n, p = medians[f"node b{batch}"], medians[f"python b{batch}"]
        print(f"batch {batch}: node/python decode {n['decode_tps'] / p['decode_tps']:.2f}x, "
              f"ttft {n['ttft_s'] / p['ttft_s']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs, "medians": medians}, indent=1) + "\n")


if __name__ == "__main__":
    main()
