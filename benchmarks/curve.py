"""Quality against training time: the curve a training budget is chosen from.

Each candidate recipe trains once, one candidate at a time (run it on a quiet machine). Its
stage 1 stops at every ``--points`` step count (a resumable stop: the run continues with the
same weights and batches as an uninterrupted one), the checkpoint is scored on the dev split,
and training goes on; after stage 2 the finished model is scored too. Seconds are the optimizer
steps' own time: not the run's stage-end checks, not stage 2's guard, not the frozen-prefix
cache, not the scoring, not loading the model (``step_seconds`` in the run's state).

Stage 1's learning rate follows its schedule over the whole run, so an early point is scored
before its decay: it is a lower bound on what a run of that many steps would reach.

    python benchmarks/curve.py --out runs/curve                              # the built-in mix
    python benchmarks/curve.py --out runs/curve --candidates balanced t05 --points 80 160 240 \\
        --table docs/results/curve.md --png docs/results/curve.png

Resumable: a candidate whose ``OUT/<name>/curve.json`` is complete is reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from alter_edge.config import TrainConfig
from alter_edge.io import atomic_write_text

# name -> TrainConfig overrides (every candidate: two stages, the TrainConfig defaults otherwise)
CANDIDATES: dict[str, dict] = {
    "balanced": {"sampling_temperature": 0.0, "stage1_lr": 3e-3},
    "t05": {"sampling_temperature": 0.5, "stage1_lr": 3e-3},
    "t1": {"sampling_temperature": 1.0, "stage1_lr": 3e-3},
    "t05_lr5e-3": {"sampling_temperature": 0.5, "stage1_lr": 5e-3},
    "t05_r8": {"sampling_temperature": 0.5, "stage1_lr": 3e-3, "mta": {"lora_rank": 8, "lora_alpha": 16.0}},
    "t05_top8": {"sampling_temperature": 0.5, "stage1_lr": 3e-3, "mta": {"num_top_layers": 8}},
}


def score(ckpt: Path, per_task_rows: int, n_tasks: int) -> dict:
    from alter_edge.training.trainer import evaluate_checkpoint

    res = evaluate_checkpoint(ckpt, max_rows=per_task_rows * n_tasks, progress=False, compute_dtype="auto")
    return {"per_task": {k: round(v, 4) for k, v in res["per_task"].items()}, "overall": round(res["overall"], 4),
            "rows": sum(res["counts"].values())}


def run_candidate(name: str, args) -> dict:
    from alter_edge.training.trainer import load_data, run_training

    out = Path(args.out) / name
    done = out / "curve.json"
    if done.is_file():
        rec = json.loads(done.read_text())
        if rec.get("complete"):
            return rec
    over = dict(CANDIDATES[name])
    mta = over.pop("mta", {})
    cfg = TrainConfig(stage1_steps=max(args.points), stage2_steps=args.stage2_steps, eval_max_rows=args.eval_rows,
                      seed=args.seed, mta=mta, **over)
    _, dev, _ = load_data(Path(args.data) if args.data else None, cfg)
    n_tasks = len({r.task for r in dev})
    ckpt = out / "checkpoint"
    rec = {"name": name, "settings": CANDIDATES[name], "points": [], "complete": False}
    done_steps = 0
    for pt in sorted(args.points):
        last = pt == max(args.points)  # the last call runs on through stage 2
        st = run_training(Path(args.data) if args.data else None, ckpt, cfg, resume=ckpt.exists(), progress=False,
                          stop_after=None if last else pt - done_steps)
        done_steps = pt
        point = {"stage1_steps": pt, **({"stage2_steps": args.stage2_steps} if last else {}),
                 "train_s": st["step_seconds"], **score(ckpt, args.per_task, n_tasks)}
        rec["points"].append(point)
        print(json.dumps({"candidate": name, **point}), flush=True)
    rec["stage2_guard"] = st.get("stage2_guard")
    rec["evals"] = st.get("evals")
    rec["complete"] = True
    atomic_write_text(done, json.dumps(rec, indent=2) + "\n")
    return rec


def table(recs: list[dict]) -> str:
    tasks = sorted(recs[0]["points"][0]["per_task"])
    head = "| candidate | settings | stage-1 steps | train s | " + " | ".join(tasks) + " | overall |"
    lines = [head, "|" + "---|" * (5 + len(tasks))]
    for r in recs:
        for p in r["points"]:
            steps = f"{p['stage1_steps']}" + (f" + {p['stage2_steps']}" if "stage2_steps" in p else "")
            cells = " | ".join(f"{p['per_task'][t]:.3f}" for t in tasks)
            lines.append(f"| {r['name']} | `{json.dumps(r['settings'])}` | {steps} | {p['train_s']:.0f} | {cells} | "
                         f"**{p['overall']:.3f}** |")
    return "\n".join(lines) + "\n"


def plot(recs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(recs[0]["points"][0]["per_task"])
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(3.2 * (len(tasks) + 1), 3.2), sharex=True)
    for r in recs:
        xs = [p["train_s"] for p in r["points"]]
        for ax, t in zip(axes, tasks, strict=False):
            ax.plot(xs, [p["per_task"][t] for p in r["points"]], marker="o", label=r["name"])
        axes[-1].plot(xs, [p["overall"] for p in r["points"]], marker="o", label=r["name"])
    for ax, t in zip(axes, tasks + ["overall"], strict=True):
        ax.set_title(t)
        ax.set_xlabel("training s")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="JSONL task file (default: the built-in mix)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--candidates", nargs="+", default=["balanced", "t05", "t1"], choices=sorted(CANDIDATES))
    ap.add_argument("--points", nargs="+", type=int, default=[80, 160, 240], help="stage-1 steps scored")
    ap.add_argument("--stage2-steps", type=int, default=20)
    ap.add_argument("--per-task", type=int, default=25, help="dev rows scored per task at every point")
    ap.add_argument("--eval-rows", type=int, default=20, help="the run's own stage-end checks (rows)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", default=None, help="also write the table here (markdown)")
    ap.add_argument("--png", default=None, help="also draw the curves here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    recs = [run_candidate(n, args) for n in args.candidates]
    text = table(recs)
    print(text)
    if args.table:
        atomic_write_text(Path(args.table), text)
    if args.png:
        plot(recs, Path(args.png))


if __name__ == "__main__":
    main()
