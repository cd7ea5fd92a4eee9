"""``alter-edge demo``: what the main job (``scripts/quickstart.sh``) prints after the export.

    alter-edge demo scores BUNDLE                         # the dev table from validation.json
    alter-edge demo dev-rows BUNDLE CHECKPOINT            # seeded dev rows: gold and prediction

``scores`` and the predictions run on the base install (the bundle, numpy, onnxruntime);
``dev-rows`` reads the checkpoint's split through ``training.checkpoint`` (the ``train`` extra).
"""

from __future__ import annotations

import random
from pathlib import Path

import click

from .common import CONTEXT, handle_errors


def dev_scores(bundle: Path) -> dict[str, dict[str, float]]:
    """Per precision, per task: the dev score the export measured on the multi-task graph."""
    from alter_edge.export.report import ValidationReport

    return ValidationReport.read(bundle).dev_scores()


def score_lines(bundle: Path) -> list[str]:
    from alter_edge.metrics import overall_score
    from alter_edge.tasks import TaskRegistry

    tasks = TaskRegistry.load(bundle / "tasks.json")
    scores = dev_scores(bundle)
    if not scores:
        return ["no dev scores in validation.json (an export without quantized graphs scores none)"]
    names = sorted(next(iter(scores.values())))
    lines = [f"{'graph':<8}" + "".join(f"{n:>14}" for n in names) + f"{'overall':>10}"]
    for prec, per_task in scores.items():
        overall = overall_score(per_task, {g: [t for t in ts if t in per_task] for g, ts in tasks.groups().items()})
        lines.append(f"{prec:<8}" + "".join(f"{per_task[n]:>14.3f}" for n in names) + f"{overall:>10.3f}")
    lines.append("classify tasks: exact match; generate tasks: ROUGE-L F1; overall (mean over task groups)")
    return lines


def seeded_dev_rows(checkpoint: Path, n: int, seed: int) -> list:
    """``n`` rows of the checkpoint's dev split (rows training never saw), picked by ``seed``."""
    from alter_edge.data import load_task_rows, recorded_data_path, split_task_rows
    from alter_edge.training.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(checkpoint)
    cfg = meta["train_config"]
    rows, source = load_task_rows(recorded_data_path(meta["state"]["data"]))
    _, dev = split_task_rows(rows, source, cfg["dev_fraction"], cfg["split_seed"])
    return random.Random(seed).sample(dev, min(n, len(dev)))


def dev_row_lines(bundle: Path, checkpoint: Path, n: int, seed: int) -> list[str]:
    from alter_edge.runtime import EdgeModel

    rows = seeded_dev_rows(checkpoint, n, seed)
    model = EdgeModel.load(bundle)
    kinds = {t.name: t.kind for t in model.tasks}
    preds: dict[int, str] = {}
    for kind, new_tokens in (("classify", 8), ("generate", 32)):  # a label is a few tokens
        mine = [i for i, r in enumerate(rows) if kinds[r.task] == kind]
        if mine:
            outs = model.generate([rows[i].input for i in mine], tasks=[rows[i].task for i in mine],
                                  max_new_tokens=new_tokens)
            preds.update({i: g.text.strip() for i, g in zip(mine, outs, strict=True)})
    lines, right = [], 0
    for i, r in enumerate(rows):
        pred = preds[i]
        mark = "=" if pred == r.target.strip() else " "
        right += mark == "="
        text = r.input if len(r.input) <= 100 else r.input[:97] + "..."
        lines.append(f"[{r.task}] {text}\n    gold: {r.target}\n  {mark} pred: {pred}")
    lines.append(f"{right} of {len(rows)} exactly right")
    return lines


@click.group("demo", context_settings=CONTEXT)
def demo_cmd() -> None:
    """What the main job prints after the export: the dev table, and seeded dev rows.

    \b
    alter-edge demo scores bundle
    alter-edge demo dev-rows bundle runs/mta --rows 8 --seed 0
    """


@demo_cmd.command("scores", context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@handle_errors()
def scores_cmd(bundle: Path) -> None:
    """The dev-split scores the export measured (fp32 and each quantized multi-task graph,
    from validation.json)."""
    for line in score_lines(bundle):
        click.echo(line)


@demo_cmd.command("dev-rows", context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--rows", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors(extra="train")
def dev_rows_cmd(bundle: Path, checkpoint: Path, rows: int, seed: int) -> None:
    """``--rows`` dev rows training never saw (picked by ``--seed``): input, gold answer and
    the bundle's prediction."""
    for line in dev_row_lines(bundle, checkpoint, rows, seed):
        click.echo(line)
