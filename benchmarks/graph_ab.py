"""Graph variants timed A B A B in one process: what one change to a graph buys.

    HF_HUB_OFFLINE=1 python benchmarks/graph_ab.py runs/decode-bench/bundle-old/model.int8.onnx \\
        runs/decode-bench/bundle/model.int8.onnx --rounds 20 --threads 2

Every graph (its KV layout from the manifest.json beside it, or a kv.json for a graph outside a
bundle such as decode_bench's plain base; the prompt's tokens from the first bundle) gets its own
onnxruntime session in this one process, through the runtime's own decode loop (decode_bench's
``worker_ours``). Each round runs every graph once, in an order that rotates, at batch 1 and then
batch 8 (``--new-tokens`` greedy tokens, eos ignored, a 32-token prompt): a round lasts a second or
two, so the shared machine's drift, which moves whole processes by up to 2x from minute to minute,
moves the graphs of one round together. Printed per graph and batch: the median decode tokens/s
over rounds, and the median over rounds of its ratio to the first graph in that round, with the
rounds' interquartile range of that ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from alter_edge.testing import cpu_flags, load_script

HERE = Path(__file__).resolve().parent


def quartiles(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], q[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("graphs", nargs="+", type=Path, help="the first is the reference of the ratios")
    ap.add_argument("--labels", nargs="*", default=None, help="one per graph (default: their paths)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--task-id", type=int, default=0, help="fed to a multi-task graph")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    labels = args.labels or [str(g) for g in args.graphs]
    if len(labels) != len(args.graphs):
        sys.exit(f"{len(args.graphs)} graphs need {len(args.graphs)} labels, got {len(labels)}")
    bench = load_script(HERE / "decode_bench.py", "decode_bench_ab")
    from tokenizers import Tokenizer

    bundles = [g.parent for g in args.graphs if (g.parent / "manifest.json").is_file()]
    if not bundles:
        sys.exit("at least one graph must sit in a bundle (its tokenizer and eos/pad ids serve every graph)")
    ref = json.loads((bundles[0] / "manifest.json").read_text())
    ids = Tokenizer.from_file(str(bundles[0] / "tokenizer.json")).encode(bench.FILLER_IDS_TEXT,
                                                                          add_special_tokens=False).ids
    timers = []
    for g in args.graphs:
        # a graph outside a bundle (decode_bench's plain base): its KV layout from kv.json beside it
        kv = (json.loads((g.parent / "manifest.json").read_text())["kv_cache"] if (g.parent / "manifest.json").is_file()
              else json.loads((g.parent / "kv.json").read_text()))
        job = {"graph": str(g), "kv": kv, "threads": args.threads, "prompt": (ids * 8)[:32],
               "eos": ref["eos_token_id"], "pad": ref["pad_token_id"]}
        if g.name.startswith("model."):
            job["task_id"] = args.task_id
        _load, timer = bench.worker_ours(job)
        for b in args.batches:  # warm-up
            timer(b, 4)
        timers.append(timer)
    n = len(timers)
    tps: dict[tuple[int, int], list[float]] = {(i, b): [] for i in range(n) for b in args.batches}
    for r in range(args.rounds):
        for i in [(r + k) % n for k in range(n)]:
            for b in args.batches:
                tps[(i, b)].append(timers[i](b, args.new_tokens)[1])
    print(f"CPU: {cpu_flags()}; {args.threads} threads; {args.rounds} rounds, each graph once a round "
          f"(order rotating), {args.new_tokens} greedy tokens after a 32-token prompt")
    print(f"{'graph':<48} {'batch':>5} {'tok/s':>8} {'/ first':>8} {'IQR of the ratio':>18}")
    out = []
    for i, label in enumerate(labels):
        for b in args.batches:
            ratios = [x / y for x, y in zip(tps[(i, b)], tps[(0, b)], strict=True)]
            lo, hi = quartiles(ratios)
            med = statistics.median(tps[(i, b)])
            print(f"{label[-48:]:<48} {b:>5} {med:8.1f} {statistics.median(ratios):8.3f} {lo:8.3f} - {hi:.3f}")
            out.append({"graph": str(args.graphs[i]), "label": label, "batch": b, "tok_s": med,
                        "ratio_to_first": statistics.median(ratios), "ratio_iqr": [lo, hi], "runs": tps[(i, b)]})
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_flags(), "threads": args.threads, "rounds": args.rounds,
                                         "results": out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
