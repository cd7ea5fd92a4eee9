"""A one-task app's cold start and peak memory, per load option, interleaved.

    HF_HUB_OFFLINE=1 python benchmarks/cold_start_bench.py BUNDLE --precision int8 --rounds 5 --threads 2

Each round starts one fresh process per variant (the order rotates every round); each process
imports the runtime, loads the bundle for one task (``EdgeModel.load(..., tasks=[task])``),
generates one token, then 32 more, and reports the seconds to its first token (from before the
import), the import alone, the load alone, and its peak RSS (VmHWM). Variants:

- ``verify``: hash checks (the default);
- ``cached``: ``verify="cached"`` after one priming process wrote its entries (a cache of its
  own under a temporary ``ALTER_EDGE_CACHE``);
- ``no-verify``: ``verify=False`` (no hash checks: the floor for what hashing costs).

Printed: medians over rounds per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import time; t0 = time.perf_counter()
from alter_edge.runtime import EdgeModel
from alter_edge.runtime.bench import peak_rss_mb
t1 = time.perf_counter()
m = EdgeModel.load({bundle!r}, threads={threads}, precision={precision!r}, tasks=[{task!r}], verify={verify!r})
t2 = time.perf_counter()
m.generate('the cat sat on the mat', task={task!r}, max_new_tokens=1)
t3 = time.perf_counter()
m.generate('the cat sat on the mat', task={task!r}, max_new_tokens=32)
import json
print(json.dumps({{"first_token_s": t3 - t0, "import_s": t1 - t0, "load_s": t2 - t1, "peak_rss_mb": peak_rss_mb()}}))
"""

VERIFY = {"verify": True, "cached": "cached", "no-verify": False}


def run_child(bundle: Path, task: str, precision: str | None, threads: int, variant: str, cache: Path) -> dict:
    code = CHILD.format(bundle=str(bundle), threads=threads, precision=precision, task=task,
                        verify=VERIFY[variant])
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(HF_HUB_OFFLINE="1", ALTER_EDGE_CACHE=str(cache))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or ["(no output)"])[-1][:300]}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {"process_s": wall, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--task", default=None, help="the app's task (default: the bundle's first, as decode_bench's)")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=list(VERIFY), choices=list(VERIFY))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if args.task is None:
        from alter_edge.runtime.bundle import load_bundle

        args.task = load_bundle(args.bundle, verify=False).tasks.names[0]
    with tempfile.TemporaryDirectory() as cache:
        if "cached" in args.variants:  # the priming process: writes the cache entries
            run_child(args.bundle, args.task, args.precision, args.threads, "cached", Path(cache))
        runs: dict[str, list[dict]] = {v: [] for v in args.variants}
        names = list(args.variants)
        for r in range(args.rounds):
            for v in names[r % len(names):] + names[:r % len(names)]:
                res = run_child(args.bundle, args.task, args.precision, args.threads, v, Path(cache))
                runs[v].append(res)
                print(f"round {r + 1} {v}: {res}", file=sys.stderr, flush=True)
    print(f"one-task app, fresh process ({args.bundle}, task {args.task}, precision {args.precision or 'default'}, "
          f"{args.threads} threads); medians of {args.rounds} interleaved rounds")
    print(f"{'variant':<10} {'process s':>9} {'first token s':>13} {'import s':>8} {'load s':>7} {'peak MB':>8}")
    table = {}
    for v, xs in runs.items():
        ok = [x for x in xs if "error" not in x]
        if not ok:
            print(f"{v:<10} error: {xs[0]['error']}")
            continue
        med = {k: statistics.median(x[k] for x in ok) for k in ok[0]}
        table[v] = med
        print(f"{v:<10} {med['process_s']:9.3f} {med['first_token_s']:13.3f} {med['import_s']:8.3f} "
              f"{med['load_s']:7.3f} {med['peak_rss_mb']:8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
