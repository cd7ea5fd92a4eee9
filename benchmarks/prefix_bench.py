"""The per-task prefix cache: ``alter-edge run`` over the built-in dev split, cache on vs off.

    python benchmarks/prefix_bench.py --bundle runs/quickstart/bundle --threads 2 --rounds 3
    python benchmarks/prefix_bench.py --tiny --work /tmp/prefix-bench-tiny --rounds 1   # smoke test

The dev split (the built-in task mix's held-out rows, ``alter_edge.data.split_task_rows`` with
``--split-seed``, as training made it; ``--rows`` keeps the first rows of each task, round
robin) is written once as a JSONL file. Each round runs the real batch job on it twice, as a
command of its own (``alter-edge run BUNDLE --input ... --output ... --batch-size B --threads
T --truncate --quiet``: a few question_gen inputs are over ``max_prompt_tokens`` and are cut in
the middle, as training cut them), cache on then off (``--no-prefix-cache``): A B A B. Timed is the job itself, as
the command reports it (the rows' reading and running, the prefixes' KV included; not the
model's load, the same for both); rows/s medians over rounds, and their ratio on/off.

Both arms' records must agree: the same output for every row (classify labels, generated
text) and label scores within 1e-4 (they are rounded to 6 digits, and the cached prefix's KV
may differ from the whole prompt's in the last float bits). Also printed: how many prompt
tokens each task's rows share at their start (what the cache can save), from the bundle's
tokenizer. The machine is shared: only the ratio within one run means much.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

JOB_LINE = re.compile(r"(\d+) rows \((\d+) resumed\), (\d+) failed, ([0-9.]+)s")


def dev_rows(args) -> list[dict]:
    if args.tiny:
        from alter_edge.testing import TINY_ROWS

        # the tiny tasks' inputs carry no instruction: give each task one, as the built-in ones have
        heads = {"parity": "count x x x", "colour": "is red a colour", "echo": "swap cat dog"}
        return [{"id": i, "task": r["task"], "input": f"{heads[r['task']]} {r['input']}"}
                for i, r in enumerate(TINY_ROWS[:args.rows or 24])]
    from alter_edge.data import BUILTIN_SOURCE, load_task_rows, split_task_rows, spread_head

    rows, source = load_task_rows(None)
    assert source == BUILTIN_SOURCE
    _, dev = split_task_rows(rows, source, seed=args.split_seed)
    dev = spread_head(dev, args.rows or 0)
    return [{"id": i, "task": r.task, "input": r.input} for i, r in enumerate(dev)]


def shared_prefixes(bundle: Path, rows: list[dict]) -> dict:
    """Per task: rows, mean prompt tokens, and the tokens every prompt of the task starts with."""
    from tokenizers import Tokenizer

    from alter_edge.prompts import encode_prompt
    from alter_edge.runtime.bundle import load_bundle
    from alter_edge.runtime.prefix import common_prefix

    b = load_bundle(bundle, verify=False)
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    out = {}
    for task in sorted({r["task"] for r in rows}):
        spec = b.tasks.get(task)
        prompts = [encode_prompt(tok, spec, r["input"], b.max_prompt_tokens)[0] for r in rows if r["task"] == task]
        shared = min(common_prefix(prompts[0], p) for p in prompts)
        out[task] = {"rows": len(prompts), "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1),
                     "shared_prefix_tokens": shared}
    return out


def run_job(args, src: Path, out: Path, cache: bool) -> float:
    cmd = [args.alter_edge, "run", str(args.bundle), "--input", str(src), "--output", str(out),
           "--batch-size", str(args.batch_size), "--truncate", "--quiet"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.precision:
        cmd += ["--precision", args.precision]
    if args.max_new_tokens:
        cmd += ["--max-new-tokens", str(args.max_new_tokens)]
    if not cache:
        cmd.append("--no-prefix-cache")
    p = subprocess.run(cmd, capture_output=True, text=True)
    m = JOB_LINE.search(p.stderr)
    if p.returncode != 0 or m is None:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    if int(m.group(3)):
        raise SystemExit(f"{m.group(3)} rows failed: {p.stderr[-1000:]}")
    return max(float(m.group(4)), 0.05)  # printed to 0.1 s: a tiny smoke run may show 0.0


def compare(a: Path, b: Path) -> int:
    """Rows whose records differ (output, finish reason, or a label score by more than 1e-4)."""
    ra = [json.loads(x) for x in a.read_text().splitlines()]
    rb = [json.loads(x) for x in b.read_text().splitlines()]
    bad = 0
    for x, y in zip(ra, rb, strict=True):
        sx, sy = x.pop("scores", {}), y.pop("scores", {})
        x.pop("probability", None), y.pop("probability", None)
        if x != y or sx.keys() != sy.keys() or any(abs(sx[k] - sy[k]) > 1e-4 for k in sx):
            bad += 1
    return bad


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("runs/quickstart/bundle"))
    ap.add_argument("--work", type=Path, default=Path("runs/prefix-bench"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=0, help="rows of the dev split (0: all of it)")
    ap.add_argument("--split-seed", type=int, default=0, help="the training run's split_seed")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the bundle's")
    ap.add_argument("--alter-edge", default=str(Path(sys.executable).with_name("alter-edge")))
    ap.add_argument("--tiny", action="store_true", help="smoke test on a tiny random bundle (built in --work)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from alter_edge.testing import tiny_bundle

        args.bundle = tiny_bundle(args.work / "tiny")[2]
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"no bundle at {args.bundle} (its manifest.json is missing)")
    rows = dev_rows(args)
    src = args.work / "dev.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    res: dict = {"bundle": str(args.bundle), "rows": len(rows), "threads": args.threads,
                 "batch_size": args.batch_size, "rounds": args.rounds,
                 "tasks": shared_prefixes(args.bundle, rows), "seconds": {"on": [], "off": []}}
    print(json.dumps(res["tasks"]), flush=True)
    for r in range(args.rounds):
        for arm in ("on", "off"):  # A B A B
            s = run_job(args, src, args.work / f"out-{arm}.jsonl", arm == "on")
            res["seconds"][arm].append(s)
            print(f"round {r + 1} cache {arm:>3}: {s:8.2f} s  {len(rows) / s:7.2f} rows/s", flush=True)
        bad = compare(args.work / "out-on.jsonl", args.work / "out-off.jsonl")
        if bad:
            raise SystemExit(f"round {r + 1}: {bad} rows differ between cache on and off")
    for arm in ("on", "off"):
        res[f"rows_per_s_{arm}"] = round(len(rows) / statistics.median(res["seconds"][arm]), 3)
    res["ratio_on_off"] = round(res["rows_per_s_on"] / res["rows_per_s_off"], 3)
    print(f"rows/s median: cache on {res['rows_per_s_on']}, off {res['rows_per_s_off']}, "
          f"ratio {res['ratio_on_off']}x (records equal)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
