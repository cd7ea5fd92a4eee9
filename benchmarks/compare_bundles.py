"""Decode speed of several bundle graphs side by side, interleaved (A B C, C B A, ...).

    HF_HUB_OFFLINE=1 python benchmarks/compare_bundles.py \\
        int8=runs/results/export/bundle:int8 int4=runs/results/export/bundle:int4 \\
        fp32=runs/results/export/bundle:fp32 --task sentiment --rounds 5

Each argument is ``NAME=BUNDLE:PRECISION``. Every round times each engine once at batch 1 and
batch 8 (``--prompt-tokens`` filler prompt, ``--new-tokens`` greedy tokens, eos ignored), in an
order that reverses every round. Prints per-engine medians and each engine's ratio to the first
one. Absolute tokens/s drift with the host's load; the ratios within one run are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path


def parse_engine(arg: str) -> tuple[str, Path, str]:
    name, sep, rest = arg.partition("=")
    path, sep2, precision = rest.rpartition(":")
    if not sep or not sep2 or not name or not path or not precision:
        raise SystemExit(f"expected NAME=BUNDLE:PRECISION, got {arg!r}")
    return name, Path(path), precision


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engines", nargs="+", metavar="NAME=BUNDLE:PRECISION")
    ap.add_argument("--task", required=True, help="task to generate for (its per-task graph if present)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None, help="also write the report here (atomically)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from alter_edge.io import atomic_write_text
    from alter_edge.runtime import EdgeModel
    from alter_edge.runtime.bench import time_generation

    engines = {}
    for arg in args.engines:
        name, path, precision = parse_engine(arg)
        m = EdgeModel.load(path, threads=args.threads, precision=precision, spinning=False, tasks=[args.task])
        time_generation(m, args.task, 1, args.prompt_tokens, 4)  # warm-up
        graph = m.runner_for([args.task]).path
        info = m.bundle.graph_for(args.task, precision)
        size = graph.stat().st_size + sum((Path(path) / w).stat().st_size for w in info.external_data)
        engines[name] = (m, {"bundle": str(path), "precision": precision, "graph": str(graph),
                             "graph_mb": round(size / 1e6, 1)})  # the graph and the weight files it reads
    times: dict[str, dict[str, list[float]]] = {n: {} for n in engines}
    order = list(engines)
    for r in range(args.rounds):
        for batch in (1, 8):
            for name in order if r % 2 == 0 else order[::-1]:
                ttft, tps = time_generation(engines[name][0], args.task, batch, args.prompt_tokens, args.new_tokens)
                times[name].setdefault(f"decode_tok_s_b{batch}", []).append(tps)
                if batch == 1:
                    times[name].setdefault("ttft_ms", []).append(1000 * ttft)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    first = order[0]
    med = {n: {k: round(statistics.median(v), 2) for k, v in d.items()} for n, d in times.items()}
    report = {"task": args.task, "threads": args.threads, "rounds": args.rounds,
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "engines": {}}
    for n in order:
        ratios = {f"{k}_vs_{first}": round(med[n][k] / med[first][k], 2) for k in med[n]}
        report["engines"][n] = {**engines[n][1], **med[n], **ratios}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
