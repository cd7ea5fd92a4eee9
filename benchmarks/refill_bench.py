"""Static batches vs continuous refill, and label scoring label after label vs batched, in one
interleaved run.

    HF_HUB_OFFLINE=1 python benchmarks/refill_bench.py --bundle runs/decode-bench/bundle \\
        --precision int8 --rows 48 --max-new-tokens 48 --rounds 3 --threads 2
    python benchmarks/refill_bench.py --tiny --work /tmp/refill-bench-tiny --rounds 2   # smoke test

One process, one EdgeModel (``--threads`` onnxruntime threads, no spinning; the multi-task graph,
or each task's own graph with ``--task-graphs``). Each round runs
every arm of a section once, in an order that reverses every round (A B, B A, ...); printed are
the medians over rounds and the ratios to the static arm. Three sections:

- ``job``: the batch job's generate path on ``--rows`` rows of the bundle's generate task (the
  built-in mix's inputs, or ``--data``), ``batch_size`` 8, greedy, ``--max-new-tokens``. Static:
  the planned batches one after another (``run_batch_rows``, what the job did before refill);
  refill: ``iter_records`` (a task's rows in 8 slots, a finished row's slot refilled). The
  output lengths are the model's own (printed); rows/s and generated tokens/s.
- ``mix``: the same prompts through ``runtime.generate.decode`` with lengths set by hand: every
  other row stops after ``--max-new-tokens / 8`` tokens, the others run the full budget (eos
  ignored), so half the rows end early whatever the model says. Static: batches of 8 (sorted
  by prompt length, as the job plans them); refill: all rows in 8 slots, once per
  ``--refill-at`` value (free slots needed before a refill).
- ``labels``: ``score_labels`` on each classify task of the bundle (its own label set), 8
  rows and 1 row: label after label (``batched=False``) vs batched over labels; ms per call
  (median of ``--label-reps`` calls per round); the largest score difference is printed.

Every arm's output is checked equal to the static arm's (records, tokens; label scores within
1e-5). The machine is shared: only ratios within one run mean much.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from alter_edge.testing import cpu_flags, tiny_bundle

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def source_rows(args) -> list[dict]:
    if args.data:
        return [json.loads(x) for x in Path(args.data).read_text().splitlines() if x.strip()]
    if args.tiny:
        from alter_edge.testing import TINY_ROWS

        return list(TINY_ROWS)
    from alter_edge.default_mix import build_default_mix

    return [r.to_dict() for r in build_default_mix()]


def interleaved(arms: dict, rounds: int, label: str) -> dict[str, list]:
    """Each arm's results per round; the order reverses every round. An arm returns
    (seconds, anything to compare, extra figures)."""
    out: dict[str, list] = {k: [] for k in arms}
    names = list(arms)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(arms[name]())
            print(f"  round {r + 1} {label} {name:>12}: {out[name][-1][0]:8.3f} s", flush=True)
    return out


def bench_job(model, rows: list[dict], args) -> dict:
    from alter_edge.runtime.batch import (
        BatchOptions,
        iter_records,
        plan_batches,
        row_from_line,
        run_batch_rows,
    )

    opts = BatchOptions(batch_size=8, max_new_tokens=args.max_new_tokens, truncate=True)
    parsed = [row_from_line(model, r, i + 1, opts) for i, r in enumerate(rows)]
    bad = [p for p in parsed if isinstance(p, dict)]
    if bad:
        raise SystemExit(f"rows the job refuses: {bad[:2]}")
    tokens = [0]
    stream_ids = model.stream_ids

    def counting(*a, **kw):  # generated tokens, for tokens/s
        for ev in stream_ids(*a, **kw):
            tokens[0] += ev.token_id is not None
            yield ev

    model.stream_ids = counting

    def arm(run):
        def go():
            tokens[0] = 0
            t0 = time.perf_counter()
            recs = sorted((r for chunk in run() for r in chunk), key=lambda r: r["line"])
            return time.perf_counter() - t0, recs, tokens[0]
        return go

    arms = {"static": arm(lambda: (run_batch_rows(model, b, opts) for b in plan_batches(parsed, 8))),
            "refill": arm(lambda: iter_records(model, parsed, opts))}
    for warm in arms.values():  # warm-up
        warm()
    res = interleaved(arms, args.rounds, "job")
    model.stream_ids = stream_ids
    ref = res["static"][0][1]
    if any(recs != ref for runs in res.values() for _, recs, _ in runs):
        raise SystemExit("job: refill records differ from the static batches' records")
    # the records hold text: its re-encoded length approximates each row's token count
    lengths = sorted(len(model.tokenizer.encode(r["output"], add_special_tokens=False).ids) for r in ref)
    reasons = {k: sum(r["finish_reason"] == k for r in ref) for k in ("eos", "length")}
    out = {"rows": len(rows), "max_new_tokens": args.max_new_tokens, "finish": reasons,
           "tokens": res["static"][0][2],
           "approx_output_tokens_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]]}
    for name, runs in res.items():
        s = statistics.median(t for t, _, _ in runs)
        out[name] = {"seconds": [round(t, 3) for t, _, _ in runs], "rows_per_s": round(len(rows) / s, 3),
                     "tokens_per_s": round(statistics.median(n / t for t, _, n in runs), 2)}
    out["refill_vs_static"] = round(out["refill"]["rows_per_s"] / out["static"]["rows_per_s"], 3)
    return out


def bench_mix(model, rows: list[dict], args) -> dict:
    from alter_edge.runtime.generate import SamplingParams, decode

    task = rows[0]["task"]
    spec = model.tasks.get(task)
    prompts = sorted((model.prompt_ids(r["input"], task, truncate=True)[0] for r in rows), key=len)
    long, short = args.max_new_tokens, max(1, args.max_new_tokens // 8)
    params = [SamplingParams(max_new_tokens=short if i % 2 else long, ignore_eos=True) for i in range(len(prompts))]
    runner = model.runner_for([task])
    tids = [spec.id] * len(prompts)
    eos, pad = model.bundle.eos_id, model.bundle.pad_id
    n_tokens = sum(p.max_new_tokens for p in params)

    def static():
        out = []
        for s in range(0, len(prompts), 8):
            out += [(s + i, t) for i, t in decode(runner, prompts[s:s + 8], tids[s:s + 8], eos, pad, params[s:s + 8])]
        return out

    def arm(run):
        def go():
            t0 = time.perf_counter()
            events = run()
            toks: list[list[int]] = [[] for _ in prompts]
            for i, t in events:
                toks[i].append(t)
            return time.perf_counter() - t0, toks
        return go

    arms = {"static": arm(static)}
    for k in args.refill_at:
        arms[f"refill@{k}"] = arm(lambda k=k: list(decode(runner, prompts, tids, eos, pad, params, slots=8,
                                                          refill_at=k)))
    for warm in arms.values():
        warm()
    res = interleaved(arms, args.rounds, "mix")
    ref = res["static"][0][1]
    if any(toks != ref for runs in res.values() for _, toks in runs):
        raise SystemExit("mix: refill tokens differ from the static batches' tokens")
    out = {"rows": len(prompts), "budgets": [short, long], "tokens": n_tokens,
           "prompt_tokens_min_max": [len(prompts[0]), len(prompts[-1])]}
    for name, runs in res.items():
        s = statistics.median(t for t, _ in runs)
        out[name] = {"seconds": [round(t, 3) for t, _ in runs], "rows_per_s": round(len(prompts) / s, 3),
                     "tokens_per_s": round(n_tokens / s, 2)}
    for name in res:
        if name != "static":
            out[f"{name}_vs_static"] = round(out[name]["rows_per_s"] / out["static"]["rows_per_s"], 3)
    return out


def bench_labels(model, rows: list[dict], args) -> dict:
    import numpy as np

    from alter_edge.runtime.scoring import score_labels

    out = {}
    for spec in model.tasks:
        if spec.kind != "classify" or not spec.labels:
            continue
        texts = [r["input"] for r in rows if r["task"] == spec.name][:8]
        if not texts:
            continue
        labels = model.label_ids(spec.name)
        runner = model.runner_for([spec.name])
        prompts = [model.prompt_ids(t, spec.name, truncate=True)[0] for t in texts]
        for B in sorted({1, len(prompts)}):
            args_ = (runner, prompts[:B], [spec.id] * B, labels, model.bundle.pad_id)

            def arm(batched, a=args_):
                def go():
                    times, scores = [], None
                    for _ in range(args.label_reps):
                        t0 = time.perf_counter()
                        scores = score_labels(*a, batched=batched)
                        times.append(time.perf_counter() - t0)
                    return statistics.median(times), scores
                return go

            arms = {"one_by_one": arm(False), "batched": arm(True)}
            for warm in arms.values():
                warm()
            res = interleaved(arms, args.rounds, f"labels {spec.name} B={B}")
            diff = max(float(np.abs(s - res["one_by_one"][0][1]).max()) for runs in res.values() for _, s in runs)
            if diff > 1e-5:
                raise SystemExit(f"labels {spec.name}: batched scores differ by {diff}")
            med = {k: statistics.median(t for t, _ in v) for k, v in res.items()}
            out[f"{spec.name} B={B}"] = {
                "labels": len(labels), "label_tokens": [len(lab) for lab in labels],
                "prompt_tokens_max": max(len(p) for p in prompts[:B]),
                "one_by_one_ms": round(1000 * med["one_by_one"], 2), "batched_ms": round(1000 * med["batched"], 2),
                "speedup": round(med["one_by_one"] / med["batched"], 3), "max_abs_diff": diff}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None, help="a bundle (default with --tiny: built under --work)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke test, not a benchmark)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/refill-bench-tiny"))
    ap.add_argument("--precision", default=None, help="fp32|int8|int4 (default: the bundle's best)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--task-graphs", action="store_true",
                    help="each task on its own graph (load(tasks=...)); default: the multi-task graph")
    ap.add_argument("--rows", type=int, default=48, help="generate rows for the job and mix sections")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--refill-at", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--label-reps", type=int, default=5)
    ap.add_argument("--data", default=None, help="JSONL rows {task, input} (default: the built-in mix; "
                                                  "--tiny: the tests' rows)")
    ap.add_argument("--skip", nargs="*", choices=["job", "mix", "labels"], default=[])
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    from alter_edge.runtime import EdgeModel

    if args.bundle is None:
        if not args.tiny:
            raise SystemExit("give --bundle (or --tiny)")
        args.work.mkdir(parents=True, exist_ok=True)
        args.bundle = tiny_bundle(args.work)[2]
    model = EdgeModel.load(args.bundle, threads=args.threads, precision=args.precision, spinning=False)
    if args.task_graphs:
        model = EdgeModel.load(args.bundle, threads=args.threads, precision=args.precision, spinning=False,
                               tasks=model.tasks.names)
    rows = [r for r in source_rows(args) if r.get("task") in set(model.tasks.names)]
    gen = next((t.name for t in model.tasks if t.kind == "generate"), None)
    gen_rows = [r for r in rows if r["task"] == gen][:args.rows]
    res: dict = {"cpu": cpu_flags(), "threads": args.threads, "precision": model.default_precision,
                 "bundle": str(args.bundle), "generate_task": gen,
                 "graph": str(model.runner_for([gen]).path.name) if gen else None, "rounds": args.rounds}
    print(f"cpu: {res['cpu']}\nthreads {args.threads}, precision {res['precision']}, graph {res['graph']}",
          flush=True)
    if gen_rows and "job" not in args.skip:
        res["job"] = bench_job(model, gen_rows, args)
        j = res["job"]
        print(f"job: {j['rows']} rows, {j['tokens']} tokens, finish {j['finish']}, output tokens "
              f"min/median/max ~{j['approx_output_tokens_min_median_max']}")
        for k in ("static", "refill"):
            print(f"  {k:>8}: {j[k]['rows_per_s']:8.3f} rows/s {j[k]['tokens_per_s']:9.2f} tok/s")
        print(f"  refill / static: {j['refill_vs_static']:.3f}x", flush=True)
    if gen_rows and "mix" not in args.skip:
        res["mix"] = bench_mix(model, gen_rows, args)
        m = res["mix"]
        print(f"mix: {m['rows']} rows, budgets {m['budgets']} (eos ignored), prompts "
              f"{m['prompt_tokens_min_max']} tokens")
        for k, v in m.items():
            if isinstance(v, dict):
                ratio = m.get(f"{k}_vs_static")
                print(f"  {k:>10}: {v['rows_per_s']:8.3f} rows/s {v['tokens_per_s']:9.2f} tok/s"
                      + (f"  {ratio:.3f}x static" if ratio else ""))
    if "labels" not in args.skip:
        res["labels"] = bench_labels(model, rows, args)
        print("labels: ms per call, label after label vs batched")
        for k, v in res["labels"].items():
            print(f"  {k:>16} ({v['labels']} labels, tokens {v['label_tokens']}): {v['one_by_one_ms']:8.2f} vs "
                  f"{v['batched_ms']:8.2f} ms  {v['speedup']:.3f}x  (max |diff| {v['max_abs_diff']:.1e})")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
