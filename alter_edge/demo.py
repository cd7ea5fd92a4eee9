"""What the main job prints after the export (torch-free: the bundle, numpy, onnxruntime).

    python -m alter_edge.demo scores BUNDLE               # the dev table from validation.json
    python -m alter_edge.demo dev-rows BUNDLE CHECKPOINT  # seeded dev rows: gold and prediction
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from .data import load_task_rows, recorded_data_path, split_task_rows
from .metrics import overall_score
from .tasks import TaskRegistry


def dev_scores(bundle: Path) -> dict[str, dict[str, float]]:
    """Per precision, per task: the dev score the export measured on the multi-task graph
    (``quantized_vs_fp32`` checks score the fp32 reference and the quantized graph on the
    whole dev split)."""
    report = json.loads((bundle / "validation.json").read_text())
    out: dict[str, dict[str, float]] = {}
    for c in report.get("checks", []):
        if c.get("check") != "quantized_vs_fp32" or not c.get("graph", "").startswith("model."):
            continue
        for task, m in c.get("metric", {}).items():
            out.setdefault("fp32", {})[task] = m["fp32"]
            out.setdefault(c["precision"], {})[task] = m[c["precision"]]
    return out


def print_scores(bundle: Path) -> None:
    tasks = TaskRegistry.load(bundle / "tasks.json")
    scores = dev_scores(bundle)
    if not scores:
        print("no dev scores in validation.json (an export without quantized graphs scores none)")
        return
    names = sorted(next(iter(scores.values())))
    print(f"{'graph':<8}" + "".join(f"{n:>14}" for n in names) + f"{'overall':>10}")
    for prec, per_task in scores.items():
        overall = overall_score(per_task, {g: [t for t in ts if t in per_task] for g, ts in tasks.groups().items()})
        print(f"{prec:<8}" + "".join(f"{per_task[n]:>14.3f}" for n in names) + f"{overall:>10.3f}")
    print("classify tasks: exact match; generate tasks: ROUGE-L F1; overall (mean over task groups)")


def seeded_dev_rows(checkpoint: Path, n: int, seed: int) -> list:
    """``n`` rows of the checkpoint's dev split (rows training never saw), picked by ``seed``."""
    state = json.loads((checkpoint / "state.json").read_text())
    cfg = json.loads((checkpoint / "train_config.json").read_text())
    rows, source = load_task_rows(recorded_data_path(state["data"]))
    _, dev = split_task_rows(rows, source, cfg["dev_fraction"], cfg["split_seed"])
    return random.Random(seed).sample(dev, min(n, len(dev)))


def print_dev_rows(bundle: Path, checkpoint: Path, n: int, seed: int) -> None:
    from .runtime import EdgeModel

    rows = seeded_dev_rows(checkpoint, n, seed)
    model = EdgeModel.load(bundle)
    kinds = {t.name: t.kind for t in TaskRegistry.load(bundle / "tasks.json")}
    preds: dict[int, str] = {}
    for kind, new_tokens in (("classify", 8), ("generate", 32)):  # a label is a few tokens
        mine = [i for i, r in enumerate(rows) if kinds[r.task] == kind]
        if mine:
            outs = model.generate([rows[i].input for i in mine], tasks=[rows[i].task for i in mine],
                                  max_new_tokens=new_tokens)
            preds.update({i: g.text.strip() for i, g in zip(mine, outs, strict=True)})
    right = 0
    for i, r in enumerate(rows):
        pred = preds[i]
        mark = "=" if pred == r.target.strip() else " "
        right += mark == "="
        text = r.input if len(r.input) <= 100 else r.input[:97] + "..."
        print(f"[{r.task}] {text}\n    gold: {r.target}\n  {mark} pred: {pred}")
    print(f"{right} of {len(rows)} exactly right")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m alter_edge.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scores")
    s.add_argument("bundle", type=Path)
    d = sub.add_parser("dev-rows")
    d.add_argument("bundle", type=Path)
    d.add_argument("checkpoint", type=Path)
    d.add_argument("--rows", type=int, default=8)
    d.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "scores":
        print_scores(args.bundle)
    else:
        print_dev_rows(args.bundle, args.checkpoint, args.rows, args.seed)


if __name__ == "__main__":
    main()
