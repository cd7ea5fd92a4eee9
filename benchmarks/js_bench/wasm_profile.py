"""Where a bundle graph's time goes in onnxruntime-web's WASM build, op by op: the graph runs in
headless Chromium (cross-origin isolated, N threads) one prompt step and then one-token steps,
with onnxruntime's profiler on (session option enableProfiling; the WASM build prints each
event to the console), and the node events are summed per operator type, prompt step apart
from decode steps. ``--micro`` times one-op graphs instead (benchmarks/js_bench/micro.py: each
candidate int8 matmul layout on SmolLM2-135M's projection shapes).

    python benchmarks/js_bench/wasm_profile.py BUNDLE --graphs model.int8.onnx,model.fp32.onnx
        [--threads 2] [--prompt 32] [--steps 4] [--json out.json]
    python benchmarks/js_bench/wasm_profile.py --micro [--threads 2] [--runs 20]
    python benchmarks/js_bench/wasm_profile.py --compare B1/model.int8.onnx,B2/model.int8.onnx [--rounds 3]

``--compare`` times graphs of several bundles (no profiler), interleaved over ``--rounds``,
and prints each one's medians. Printed per graph: the steps' wall time (profiling off, median of the decode steps), then per
operator type: milliseconds per decode step, its share, node count per step, prompt-step ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TEST = ROOT / "js" / "web" / "test"


def _serve(bundle: Path, micro: Path | None):
    from alter_edge.web import Mount, make_server, web_mounts

    mounts = web_mounts(bundle, extra={"/bench/": HERE / "pages"})
    if micro is not None:
        mounts.insert(0, Mount("/bench/micro/", micro.resolve(), no_store=True))
    srv = make_server(mounts, 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def _drive(url: str, console: Path | None = None) -> dict:
    cmd = ["node", "drive.mjs", "--timeout", "1800", url] + (["--console", str(console)] if console else [])
    p = subprocess.run(cmd, cwd=TEST, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"{url}: the browser failed ({p.returncode}):\n{p.stderr[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if "error" in out:
        raise SystemExit(f"{url}: {out['error']}")
    return out


def parse_events(console: Path) -> list[dict]:
    """onnxruntime's profile events from the page's console (one JSON object a line)."""
    events = []
    for line in console.read_text(errors="replace").splitlines():
        line = line.strip().rstrip(",")
        if line.startswith("{") and '"ph"' in line:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def per_op(events: list[dict]) -> tuple[dict, dict, int]:
    """(decode ms per step by op, prompt-step ms by op, decode steps): node events assigned to
    the ``model_run`` event holding them; the first run is the prompt step."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    prompt: dict[str, float] = defaultdict(float)
    decode: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        k = next((i for i, (a, b) in enumerate(runs) if a <= e["ts"] <= b), None)
        if k is None:
            continue
        if k == 0:
            prompt[op] += e["dur"] / 1000
        else:
            decode[op][0] += e["dur"] / 1000
            decode[op][1] += 1
    steps = max(len(runs) - 1, 1)
    return ({op: (ms / steps, n / steps) for op, (ms, n) in decode.items()}, dict(prompt), steps)


def profile_graph(base: str, graph: str, args, work: Path) -> dict:
    query = f"graph={graph}&threads={args.threads}&prompt={args.prompt}&steps={args.steps}"
    timed = _drive(f"{base}/bench/profile.html?{query}")
    console = work / f"{graph}.console.log"
    _drive(f"{base}/bench/profile.html?{query}&profile=1", console)
    decode, prompt, steps = per_op(parse_events(console))
    total = sum(ms for ms, _ in decode.values()) or 1.0
    print(f"\n{graph}: {args.threads} threads, load {timed['loadMs'] / 1000:.2f} s, prompt step ({args.prompt} tokens) "
          f"{timed['promptMs']:.0f} ms, decode step {timed['decodeMedianMs']:.0f} ms (median of {args.steps}) = "
          f"{timed['tokensPerSecond']:.2f} tok/s; renderer peak {timed.get('renderer_peak_mb') or float('nan'):.0f} MB")
    print(f"  {'op':34s} {'ms/step':>9s} {'share':>6s} {'nodes':>6s} {'prompt ms':>10s}   (profiled: {steps} decode steps)")
    for op, (ms, n) in sorted(decode.items(), key=lambda kv: -kv[1][0]):
        print(f"  {op:34s} {ms:9.2f} {100 * ms / total:5.1f}% {n:6.0f} {prompt.get(op, 0.0):10.1f}")
    return {"graph": graph, "timed": {k: v for k, v in timed.items() if k != "requests"},
            "decode_ms_per_step": {op: ms for op, (ms, _) in decode.items()},
            "nodes_per_step": {op: n for op, (_, n) in decode.items()}, "prompt_ms": prompt}


def micro(base: str, args) -> list[dict]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("js_bench_micro", HERE / "micro.py")  # next to this file
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = []
    for k, n in mod.SHAPES:
        for v in mod.VARIANTS:
            r = _drive(f"{base}/bench/profile.html?micro={v}-{k}x{n}.onnx&k={k}&threads={args.threads}&rows=1"
                       f"&runs={args.runs}")
            out.append({"variant": v, "K": k, "N": n, "ms": r["medianMs"]})
            print(f"{v:14s} {k:5d}x{n:<6d} {r['medianMs']:9.3f} ms", flush=True)
    return out


def compare(args) -> list[dict]:
    """Time BUNDLE/GRAPH pairs (profiling off), interleaved: A B C, then B C A, ..."""
    import statistics

    pairs = [(Path(x).parent, Path(x).name) for x in args.compare.split(",")]
    servers = {b: _serve(b, None) for b in {b for b, _ in pairs}}
    runs = []
    try:
        for r in range(args.rounds):
            for b, g in pairs[r % len(pairs):] + pairs[:r % len(pairs)]:
                base = servers[b][1]
                t = _drive(f"{base}/bench/profile.html?graph={g}&threads={args.threads}&prompt={args.prompt}"
                           f"&steps={args.steps}")
                runs.append({"bundle": str(b), "graph": g, "round": r, **{k: v for k, v in t.items()
                                                                         if k not in ("requests", "url")}})
                print(f"round {r} {b}/{g}: decode {t['decodeMedianMs']:.0f} ms/step ({t['tokensPerSecond']:.2f} "
                      f"tok/s), prompt {t['promptMs']:.0f} ms, load {t['loadMs'] / 1000:.2f} s, renderer peak "
                      f"{t.get('renderer_peak_mb') or float('nan'):.0f} MB", flush=True)
    finally:
        for srv, _ in servers.values():
            srv.shutdown()
    print(f"\nmedians over {args.rounds} rounds, {args.threads} threads, {args.prompt}-token prompt:")
    for b, g in pairs:
        rs = [x for x in runs if x["bundle"] == str(b) and x["graph"] == g]
        med = {k: statistics.median(x[k] for x in rs) for k in ("tokensPerSecond", "promptMs", "loadMs")}
        peak = statistics.median(x.get("renderer_peak_mb") or 0 for x in rs)
        print(f"  {b}/{g}: {med['tokensPerSecond']:.2f} tok/s, prompt {med['promptMs']:.0f} ms, load "
              f"{med['loadMs'] / 1000:.2f} s, renderer peak {peak:.0f} MB")
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, nargs="?")
    ap.add_argument("--graphs", default="model.int8.onnx")
    ap.add_argument("--micro", action="store_true", help="time one-op matmul graphs (micro.py) instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--compare", default=None, help="BUNDLE/GRAPH,... timed interleaved (no profiler)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if shutil.which("node") is None or not (ROOT / "js" / "web" / "node_modules" / "puppeteer-core").is_dir():
        raise SystemExit("wasm_profile needs node 20+ and js/web/node_modules (scripts/setup.sh runs npm ci there)")
    with tempfile.TemporaryDirectory(prefix="wasm-profile-") as tmp:
        work = Path(tmp)
        if args.compare:
            results = compare(args)
            srv = None
        elif args.micro:
            subprocess.run([sys.executable, str(HERE / "micro.py"), "--out", str(work / "micro")], check=True,
                           capture_output=True)
            (work / "b").mkdir()
            (work / "b" / "manifest.json").write_text("{}")
            srv, base = _serve(work / "b", work / "micro")
            results = micro(base, args)
        else:
            if args.bundle is None:
                raise SystemExit("give a BUNDLE (or --micro)")
            srv, base = _serve(args.bundle, None)
            results = [profile_graph(base, g, args, work) for g in args.graphs.split(",")]
        if srv is not None:
            srv.shutdown()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": args.threads, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
