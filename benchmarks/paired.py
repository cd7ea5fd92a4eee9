"""Two rows of the quality table compared row by row on the same dev rows (paired).

The table's seed spread says how much a row's overall score moves from seed to seed; this
says, for two rows A and B scored on the same dev rows, on how many rows A was better,
worse or equal, task by task, pooled over the seeds both rows have, with a bootstrap
interval for the overall difference (dev rows resampled within each task, seeds kept
paired) and an exact sign test on the classify rows that differ.

    python benchmarks/paired.py runs/results-v2 shared_lora mta [--seeds 0 1 2]

A ``results.py --folds K`` folder compares the same way: its ``dev.jsonl`` is every train row
(each scored by the fold run that did not train on it) and each ``<row>-s<seed>/result.json``
holds the K folds' predictions in that order. While such a run is still going,
``--partial-folds`` compares on the folds both rows have finished (``folds/<row>-s<seed>-f<f>``),
each fold's test rows paired as they are::

    python benchmarks/paired.py runs/results-cv shared_lora mta --partial-folds

Predictions come from each run's ``result.json`` (``eval.predictions``, written since
session 4); a run scored before that is scored again from its checkpoint with the dtype it
was scored in, checked to reproduce its recorded per-task scores, and the predictions are
kept in ``OUT/<row>-s<seed>/predictions.json``.

The export row's precisions compare the same way, as ``export:PRECISION`` (``pytorch``,
``fp32``, ``int8``, ``int4``): what quantization changes, row by row, on one
checkpoint (one "seed")::

    python benchmarks/paired.py runs/results-v2 export:int8 export:fp32

An export recorded before predictions were kept is scored again from its bundle through the
runtime (or, for ``pytorch``, from its checkpoint in float32), checked against the recorded
scores, and cached in ``OUT/export/predictions-<precision>.json`` (tied to that export's
``finished`` time, so a redone export is never read from an older one's cache).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from alter_edge.data import load_jsonl
from alter_edge.io import atomic_write_text, read_json
from alter_edge.metrics import overall_score, row_metric
from alter_edge.tasks import TaskRegistry


class PairedError(Exception):
    """A missing run or file, said in one line."""


def run_predictions(run_dir: Path, eval_file: Path, progress: bool) -> list[str]:
    res = read_json(run_dir / "result.json", PairedError)
    preds = res["eval"].get("predictions")
    if preds is not None:
        return preds
    cached = run_dir / "predictions.json"
    if cached.is_file():
        return read_json(cached, PairedError)["predictions"]
    from alter_edge.training.trainer import evaluate_checkpoint

    dtype = res["eval"].get("dtype", "float32")
    ev = evaluate_checkpoint(run_dir / "checkpoint", eval_file, progress=progress, compute_dtype=dtype,
                             with_predictions=True)
    _check_reproduced(run_dir.name, res["eval"]["per_task"], ev["per_task"])
    atomic_write_text(cached, json.dumps({"dtype": dtype, "predictions": ev["predictions"]}) + "\n")
    return ev["predictions"]


EXPORT_PREFIX = "export:"


def _results_module():
    """benchmarks/results.py (bundle scoring, the export row's bundle layout), loaded by path."""
    from alter_edge.testing import load_script

    return load_script(Path(__file__).with_name("results.py"), "alter_edge_bench_results")


def _check_reproduced(what: str, recorded: dict, now: dict) -> None:
    moved = {t: (round(v, 4), recorded.get(t)) for t, v in now.items() if round(v, 4) != recorded.get(t)}
    if moved:  # the comparison must be of the runs the table reports
        raise PairedError(f"{what}: scoring again gave other per-task scores (now, recorded): {moved}")


def export_predictions(export_dir: Path, precision: str, eval_file: Path, progress: bool) -> list[str]:
    """Per-row greedy outputs of one precision of the export row (``pytorch`` = its checkpoint)."""
    res = read_json(export_dir / "result.json", PairedError)
    recs = {"pytorch": res.get("pytorch"), **res.get("precisions", {})}
    rec = recs.get(precision)
    if rec is None:
        have = sorted(k for k, v in recs.items() if v is not None)
        raise PairedError(f"the export row has no precision {precision!r}; it has: {', '.join(have)}")
    if rec.get("predictions") is not None:
        return rec["predictions"]
    cached = export_dir / f"predictions-{precision}.json"
    if cached.is_file():  # only if made from this export (a redone export row leaves old files behind)
        kept = read_json(cached, PairedError)
        if kept.get("export_finished") == res.get("finished"):
            return kept["predictions"]
    if precision == "pytorch":
        from alter_edge.training.trainer import evaluate_checkpoint

        ev = evaluate_checkpoint(Path(res["source"]["checkpoint"]), eval_file, progress=progress,
                                 compute_dtype=rec.get("dtype", "float32"), with_predictions=True)
    else:
        results = _results_module()
        bundle, runtime_precision = next((export_dir / name, p) for name, _, precs in results.EXPORT_BUNDLES
                                         for p, label in precs.items() if label == precision)
        threads = res.get("spec", {}).get("threads")
        ev = results.score_bundle(bundle, runtime_precision, load_jsonl(eval_file), threads, progress)
    _check_reproduced(f"export {precision}", rec["per_task"], ev["per_task"])
    atomic_write_text(cached, json.dumps({"export_finished": res.get("finished"),
                                          "predictions": ev["predictions"]}) + "\n")
    return ev["predictions"]


def row_scores(rows, preds: list[str], tasks: TaskRegistry) -> np.ndarray:
    if len(preds) != len(rows):
        raise PairedError(f"{len(preds)} predictions for {len(rows)} dev rows: not scored on this eval file")
    fns = {t.name: row_metric(t.kind) for t in tasks}
    return np.array([fns[r.task](p, r.target) for r, p in zip(rows, preds, strict=True)], dtype=np.float64)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of ``wins`` vs ``losses`` under p = 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(a: np.ndarray, b: np.ndarray, task_of: list[str], tasks: TaskRegistry,
            rounds: int = 2000, seed: int = 0) -> dict:
    """``a``, ``b``: (seeds, rows) per-row scores of the two rows; seeds paired."""
    groups = tasks.groups()
    names = sorted(set(task_of))
    idx = {t: np.array([i for i, x in enumerate(task_of) if x == t]) for t in names}
    per_task = {}
    for t in names:
        d = (a[:, idx[t]] - b[:, idx[t]]).ravel()
        wins, losses = int((d > 0).sum()), int((d < 0).sum())
        rec = {"pairs": int(d.size), "mean_diff": float(d.mean()), "a_better": wins, "b_better": losses,
               "equal": int(d.size - wins - losses)}
        if tasks.get(t).kind == "classify":
            rec["sign_test_p"] = sign_test(wins, losses)
        per_task[t] = rec
    diff = overall_score({t: per_task[t]["mean_diff"] for t in names}, groups)
    rng = np.random.default_rng(seed)
    boot = np.empty(rounds)
    boot_task = {t: np.empty(rounds) for t in names}
    for k in range(rounds):
        means = {}
        for t in names:
            pick = rng.choice(idx[t], size=idx[t].size, replace=True)
            means[t] = boot_task[t][k] = float((a[:, pick] - b[:, pick]).mean())
        boot[k] = overall_score(means, groups)
    for t in names:
        per_task[t]["ci95"] = [float(x) for x in np.percentile(boot_task[t], [2.5, 97.5])]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"per_task": per_task, "overall_diff": diff, "overall_ci95": [float(lo), float(hi)],
            "seeds": int(a.shape[0]), "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the --out folder of benchmarks/results.py")
    ap.add_argument("row_a")
    ap.add_argument("row_b")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: every seed both rows have")
    ap.add_argument("--rounds", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--partial-folds", action="store_true",
                    help="a results.py --folds folder still running: compare on the folds both rows finished")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except PairedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    out = args.out
    eval_file = out / "dev.jsonl"
    if not eval_file.is_file():
        raise PairedError(f"{eval_file} not found: give the --out folder of a benchmarks/results.py run")

    exported = [r.startswith(EXPORT_PREFIX) for r in (args.row_a, args.row_b)]
    if any(exported):
        if not all(exported) or args.seeds is not None:
            raise PairedError("an export precision (export:PRECISION) compares only with another precision of "
                              "the same export, without --seeds")
        return _report(args, *_export_scores(args, out, eval_file))

    if args.partial_folds:
        return _report(args, *_partial_fold_scores(args, out))

    def seeds_of(row: str) -> set[int]:
        return {int(p.parent.name.rsplit("-s", 1)[1]) for p in out.glob(f"{row}-s*/result.json")}

    both = seeds_of(args.row_a) & seeds_of(args.row_b)
    seeds = sorted(both if args.seeds is None else set(args.seeds))
    missing = [f"{r}-s{s}" for s in seeds for r in (args.row_a, args.row_b) if s not in seeds_of(r)]
    if not seeds or missing:
        raise PairedError(f"no finished run for {', '.join(missing) or 'any common seed'} in {out}; "
                          f"{args.row_a} has seeds {sorted(seeds_of(args.row_a))}, "
                          f"{args.row_b} has {sorted(seeds_of(args.row_b))}")
    rows = load_jsonl(eval_file)
    run = out / f"{args.row_a}-s{seeds[0]}"
    # a cross-validated run (results.py --folds) keeps its tasks beside its result, not in a checkpoint
    tasks = TaskRegistry.load(run / "checkpoint" / "tasks.json" if (run / "checkpoint").is_dir() else run / "tasks.json")
    scores = {r: np.stack([row_scores(rows, run_predictions(out / f"{r}-s{s}", eval_file, not args.quiet), tasks)
                           for s in seeds]) for r in (args.row_a, args.row_b)}
    times = {r: run_times([out / f"{r}-s{s}" for s in seeds]) for r in (args.row_a, args.row_b)}
    return _report(args, rows, tasks, scores, seeds, times)


def _partial_fold_scores(args, out: Path) -> tuple:
    """The rows of the folds that both rows finished for every seed, and their per-row scores."""
    folds_dir = out / "folds"
    tests = sorted(folds_dir.glob("fold*-test.jsonl"), key=lambda p: int(p.name[4:-len("-test.jsonl")]))
    seeds = args.seeds if args.seeds is not None else sorted(
        {int(p.parent.name[len(args.row_a) + 2:].split("-f")[0]) for p in folds_dir.glob(f"{args.row_a}-s*-f*/result.json")})
    done = [f for f in range(len(tests)) if all(
        (folds_dir / f"{r}-s{s}-f{f}" / "result.json").is_file() for r in (args.row_a, args.row_b) for s in seeds)]
    if not seeds or not done:
        raise PairedError(f"no fold of {folds_dir} is finished by both {args.row_a} and {args.row_b} "
                          f"for seeds {seeds or 'any'}")
    rows = [r for f in done for r in load_jsonl(tests[f])]
    tasks = TaskRegistry.load(folds_dir / f"{args.row_a}-s{seeds[0]}-f{done[0]}" / "checkpoint" / "tasks.json")

    def preds(row: str, seed: int) -> list[str]:
        return [p for f in done
                for p in read_json(folds_dir / f"{row}-s{seed}-f{f}" / "result.json", PairedError)["eval"]["predictions"]]

    scores = {r: np.stack([row_scores(rows, preds(r, s), tasks) for s in seeds]) for r in (args.row_a, args.row_b)}
    times = {r: run_times([folds_dir / f"{r}-s{s}-f{f}" for s in seeds for f in done]) for r in (args.row_a, args.row_b)}
    print(f"folds {done} of {len(tests)} finished by both rows", file=sys.stderr)
    return rows, tasks, scores, seeds, times


def _export_scores(args, out: Path, eval_file: Path) -> tuple:
    export_dir = out / "export"
    res = read_json(export_dir / "result.json", PairedError)
    rows = load_jsonl(eval_file)
    tasks = TaskRegistry.load(Path(res["source"]["checkpoint"]) / "tasks.json")
    scores = {r: row_scores(rows, export_predictions(export_dir, r[len(EXPORT_PREFIX):], eval_file,
                                                     not args.quiet), tasks)[None]
              for r in (args.row_a, args.row_b)}
    return rows, tasks, scores, [res["source"]["seed"]]


def run_times(run_dirs: list[Path]) -> dict | None:
    """Training seconds and CPU seconds (results.py's ``train_s`` / ``cpu_s``) summed over the
    compared runs; None where a run lacks one (``cpu_s``: runs from before it was recorded)."""
    recs = [read_json(d / "result.json", PairedError) for d in run_dirs]
    out = {}
    for k in ("train_s", "cpu_s"):
        vals = [r.get(k) for r in recs]
        out[k] = None if any(v is None for v in vals) else round(sum(vals), 1)
    return out


def _report(args, rows, tasks, scores: dict, seeds: list, times: dict | None = None) -> int:
    res = compare(scores[args.row_a], scores[args.row_b], [r.task for r in rows], tasks, args.rounds)
    res.update({"a": args.row_a, "b": args.row_b, "seed_list": seeds, "dev_rows": len(rows), "time": times})
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    a, b = args.row_a, args.row_b
    print(f"{a} (A) vs {b} (B), seeds {seeds}, {len(rows)} dev rows each: per-row scores, A - B")
    print("| task | pairs | mean A - B | 95% interval | A better | B better | equal | sign test p |")
    print("|---|---|---|---|---|---|---|---|")
    for t, r in res["per_task"].items():
        p = f"{r['sign_test_p']:.3f}" if "sign_test_p" in r else "-"
        lo, hi = r["ci95"]
        print(f"| {t} | {r['pairs']} | {r['mean_diff']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {r['a_better']} "
              f"| {r['b_better']} | {r['equal']} | {p} |")
    lo, hi = res["overall_ci95"]
    print(f"overall A - B {res['overall_diff']:+.4f}, 95% bootstrap interval [{lo:+.4f}, {hi:+.4f}] "
          f"({args.rounds} resamples of the dev rows within each task, seeds paired)")
    if times:
        for k, what in (("train_s", "training seconds"), ("cpu_s", "CPU seconds of the runs")):
            ta, tb = times[args.row_a][k], times[args.row_b][k]
            if ta is not None and tb is not None and tb > 0:
                print(f"{what}: A {ta:,.0f}, B {tb:,.0f}, A / B {ta / tb:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
