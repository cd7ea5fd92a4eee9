"""``alter-edge train`` and ``alter-edge eval`` (torch is imported inside the commands, so the
CLI itself loads with a runtime-only install)."""

from __future__ import annotations

from pathlib import Path

import click

from alter_edge.kinds import NAMES as KIND_NAMES
from alter_edge.presets import PRESETS

from .common import CONTEXT, echo_json, handle_errors


@click.command("train", context_settings=CONTEXT)
@click.option("--data", "data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSONL rows {task, input, target}. Default: the built-in task mix.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Checkpoint directory to create (or to continue with --resume).")
@click.option("--base-model", default="smollm2-135m", show_default=True,
              help="Built-in name, local Hugging Face directory, or Hub id.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="A named configuration (alter_edge/presets.py): reference = the authors' (5 upcycled ffn experts "
                   "in one middle block, a mixture per task group, full fine-tuning, one stage); poly; hydra. "
                   "Flags given beside it win.")
@click.option("--adapter-kind", type=click.Choice(list(KIND_NAMES)), default=None, help="Default: lora.")
@click.option("--num-adapters", type=int, default=None, help="K adapters per block (default: tasks + 1 shared).")
@click.option("--layers", default=None, help="Adapted block indices, e.g. '26,27,28,29' (default: top --top-layers).")
@click.option("--top-layers", type=int, default=None, help="Adapt the top N blocks.")
@click.option("--rank", type=int, default=None, help="LoRA rank.")
@click.option("--attention/--no-attention", default=None,
              help="lora kind: also adapt each adapted block's attention projections (default: on for lora).")
@click.option("--gate", type=click.Choice(["task", "token"]), default="task", show_default=True,
              help="token: a learned per-token gate on top of the task mixture (exports as the multi-task "
                   "graph only: alter-edge export CKPT --task none).")
@click.option("--stage1-steps", type=int, default=None)
@click.option("--stage2-steps", type=int, default=None)
@click.option("--train-base/--no-train-base", default=None,
              help="Train the base model's weights too (full fine-tuning; the frozen-prefix cache is then off).")
@click.option("--route", type=click.Choice(["task", "group"]), default=None,
              help="A mixture per task (default) or per task group (nli / classify / generate).")
@click.option("--epochs", type=float, default=None, help="Stage 1 runs this many epochs (in place of --stage1-steps).")
@click.option("--stages", type=click.Choice(["1", "2"]), default=None,
              help="2 = ALTER's two-stage recipe (default); 1 = adapters and mixture together.")
@click.option("--stage2-holdout", type=float, default=None,
              help="Keep this fraction of each task's train rows for stage 2 only (default 0: both stages see every row).")
@click.option("--stage2-guard", type=float, default=None,
              help="Two stages: this fraction of each task's train rows is trained on by neither stage; stage 2's "
                   "mixture is kept only if their loss falls (default 0.05; 0 = always keep).")
@click.option("--stage1-lr", type=float, default=None, help="Stage 1's peak learning rate (default 3e-3).")
@click.option("--sampling-temperature", type=click.FloatRange(0.0, 1.0), default=None,
              help="Task sampling p ~ n_task^T: 0 = balanced across tasks, 1 = as in the data.")
@click.option("--layout", type=click.Choice(["packed", "padded"]), default=None,
              help="packed (default): rows concatenated into lanes, block-diagonal attention; padded: a row each. "
                   "The same loss and gradients.")
@click.option("--batch-size", type=int, default=None)
@click.option("--micro-batch-tokens", type=int, default=None,
              help="Run each batch in parts of at most this many padded tokens, gradients summed: the same "
                   "update, less memory (default 2048; 0 = whole batches). A run may resume with another value.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-rows", type=click.IntRange(min=0), default=None,
              help="Score this many dev rows (spread across tasks) after each stage (default 0: the "
                   "whole dev split).")
@click.option("--no-cache", is_flag=True, help="Run the full forward every step (no frozen-prefix cache).")
@click.option("--dtype", "compute_dtype", type=click.Choice(["auto", "bfloat16", "float32"]), default="auto",
              show_default=True,
              help="Autocast dtype of the training steps: auto = bfloat16 where the CPU has native bf16 "
                   "(AVX512-BF16, AMX), else float32 (emulated bf16 is several times slower).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--distributed", is_flag=True,
              help="One rank of a data-parallel run started by torchrun (gloo): each rank takes its share of "
                   "every batch; rank 0 writes the checkpoint (docs/training.md).")
@handle_errors(extra="train")
def train_cmd(data, out, base_model, preset, adapter_kind, num_adapters, layers, top_layers, rank, attention, gate,
              train_base, route, epochs, stage1_steps, stage2_steps, stages, stage2_holdout, stage2_guard, stage1_lr, sampling_temperature, layout,
              batch_size, micro_batch_tokens, seed, eval_rows, no_cache, compute_dtype, resume, quiet, distributed):
    """Train an MTA model with the two-stage recipe and write a checkpoint directory.

    \b
    alter-edge train --out runs/mta                       # built-in base + task mix
    alter-edge train --data tasks.jsonl --out runs/mta --adapter-kind ffn
    alter-edge train --data tasks.jsonl --out runs/ref --preset reference
    alter-edge train --data tasks.jsonl --out runs/mta --resume
    torchrun --nproc-per-node 2 -m alter_edge.cli train --distributed --data tasks.jsonl --out runs/mta
    """
    from alter_edge.config import TrainConfig
    from alter_edge.presets import train_kwargs
    from alter_edge.training.trainer import run_training

    mta: dict = {} if adapter_kind is None else {"adapter_kind": adapter_kind}
    if num_adapters is not None:
        mta["num_adapters"] = num_adapters
    if layers:
        try:
            mta["layers"] = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError as e:
            raise click.BadParameter(f"--layers takes comma-separated integers, got {layers!r}") from e
    if top_layers is not None:
        mta["num_top_layers"], mta["placement"] = top_layers, "top"
    if rank is not None:
        mta["lora_rank"] = rank
    if attention is not None:
        mta["lora_attention"] = attention
    if gate != "task":
        mta["gate"] = gate
    kwargs = {"base_model": base_model, "seed": seed, "compute_dtype": compute_dtype}
    if no_cache:
        kwargs["use_cache"] = False
    for k, v in (("stages", None if stages is None else int(stages)), ("train_base", train_base), ("route", route),
                 ("epochs", epochs), ("stage1_steps", stage1_steps), ("stage2_steps", stage2_steps), ("batch_size", batch_size),
                 ("stage2_holdout", stage2_holdout), ("micro_batch_tokens", micro_batch_tokens),
                 ("eval_max_rows", eval_rows), ("stage2_guard", stage2_guard), ("stage1_lr", stage1_lr),
                 ("sampling_temperature", sampling_temperature), ("layout", layout)):
        if v is not None:
            kwargs[k] = v
    cfg = TrainConfig(**train_kwargs(preset, kwargs, mta))
    collective = None
    if distributed:
        from alter_edge.training.distributed import TorchDistributed

        collective = TorchDistributed.from_env()
    result = run_training(data, out, cfg, resume=resume, progress=not quiet, collective=collective)
    if collective is not None and not collective.is_main:
        return
    for stage, ev in result.get("evals", {}).items():
        click.echo(f"{stage}: dev overall {ev['overall']:.3f}  " +
                   "  ".join(f"{t}={s:.3f}" for t, s in ev["per_task"].items()))
    guard = result.get("stage2_guard")
    if guard and "kept" in guard:
        click.echo(f"stage 2 guard ({guard['rows']} rows): {guard['why']}")
    click.echo(f"checkpoint: {out}")


@click.command("eval", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", "data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSONL rows {task, input, target}. Default: the checkpoint's own dev split.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--max-rows", type=int, default=0, help="Score at most this many rows (0 = all).")
@click.option("--label-scoring", is_flag=True, help="Also score classify tasks by label likelihood.")
@click.option("--base-model", default=None, help="Override the base model recorded in the checkpoint.")
@click.option("--dtype", "compute_dtype", type=click.Choice(["float32", "bfloat16", "auto"]), default=None,
              help="Autocast dtype (default float32, the reference the exported graphs are checked against); "
                   "bfloat16 is 2-5x faster on CPUs with native bf16 (auto picks it there), scores may move slightly.")
@click.option("--bf16", is_flag=True, help="Same as --dtype bfloat16.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@handle_errors(extra="train")
def eval_cmd(checkpoint, data, as_json, max_rows, label_scoring, base_model, compute_dtype, bf16, quiet):
    """Score a checkpoint per task: exact match (classify), ROUGE-L F1 (generate).

    \b
    alter-edge eval runs/mta --data dev.jsonl
    alter-edge eval runs/mta --json
    """

    if bf16 and compute_dtype not in (None, "bfloat16"):
        raise click.UsageError(f"--bf16 means --dtype bfloat16; it cannot be combined with --dtype {compute_dtype}")
    dtype = "bfloat16" if bf16 else compute_dtype or "float32"
    from alter_edge.training.trainer import evaluate_checkpoint

    res = evaluate_checkpoint(checkpoint, data, max_rows=max_rows, label_scoring=label_scoring,
                              base_model=base_model, progress=not quiet, compute_dtype=dtype)
    if as_json:
        echo_json(res)
        return
    click.echo(format_table(res))


def format_table(res: dict) -> str:
    chars = res.get("per_task_char") or {}
    lines = [f"{'task':<20} {'kind':<9} {'rows':>5} {'score':>7}" + (f" {'char':>7}" if chars else "") +
             ("  label-scoring" if res.get("label_scoring") else "")]
    for t, s in res["per_task"].items():
        extra = f" {chars[t]:>7.3f}" if t in chars else (" " * 8 if chars else "")
        if res.get("label_scoring") and t in res["label_scoring"]:
            extra += f"  {res['label_scoring'][t]:.3f}"
        lines.append(f"{t:<20} {res['kinds'][t]:<9} {res['counts'][t]:>5} {s:>7.3f}{extra}")
    lines.append(f"{'overall (mean over task groups)':<36} {res['overall']:>7.3f}" +
                 (f" {res['overall_char']:>7.3f}" if res.get("overall_char") is not None else ""))
    if chars:
        lines.append("score: exact match (classify), ROUGE-L F1 on words (generate); char: the authors' metric, "
                     "ROUGE-L F1 on characters for generate tasks")
    return "\n".join(lines)
