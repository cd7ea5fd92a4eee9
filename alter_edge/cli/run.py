"""``alter-edge run`` and ``alter-edge bench``: the torch-free runtime (base install only)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from alter_edge.runtime.session import OPT_LEVELS

from .common import (
    CONTEXT,
    cli_message,
    echo_json,
    handle_errors,
    missing_extra_message,
    no_prefix_cache_option,
    threads_precision_options,
)

EXIT_ROWS_FAILED = 3  # the batch job finished but some rows are error records
EXIT_INTERRUPTED = 130


def _load(bundle: Path, threads: int | None, precision: str | None, optimization: str = "all",
          tasks: list[str] | None = None, engine: str = "onnxruntime", prefix_cache: bool = True):
    from alter_edge.runtime.model import EdgeModel

    return EdgeModel.load(bundle, threads=threads, precision=precision, optimization=optimization,
                          tasks=tasks, engine=engine, prefix_cache=prefix_cache)


@click.command("run", context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--task", default=None, help="Task for the texts (and rows of --input without one).")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSONL rows {id, task, input} to run as a batch job.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where the batch job writes its JSONL records (input order).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--resume", is_flag=True, help="Skip rows an interrupted run already finished.")
@click.option("--truncate", is_flag=True,
              help="Cut an over-long input in the middle to max_prompt_tokens (as training did) instead of an error record.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None)
@click.option("--generate", "generate_labels", is_flag=True,
              help="Classify tasks: generate freely instead of scoring the label set.")
@click.option("--stream", is_flag=True, help="Texts: print tokens as they come.")
@click.option("--json", "as_json", is_flag=True, help="Texts: one JSON record per line.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run the batch job on Ray Data: a local cluster, or the one at ADDRESS (auto, host:6379, "
                   "ray://host:10001); the output is the local job's, byte for byte. Needs alter-edge[ray].")
@click.option("--actors", type=click.IntRange(min=1), default=2, show_default=True,
              help="--ray: EdgeModel actors in the pool (--threads is then per actor, default 1).")
@no_prefix_cache_option
@threads_precision_options
@click.pass_context
@handle_errors()
def run_cmd(ctx, bundle, texts, task, input_path, output_path, batch_size, resume, truncate,
            max_new_tokens, generate_labels, stream, as_json, quiet, ray_address, actors, no_prefix_cache,
            threads, precision) -> None:
    """Run a bundle on texts, or on a JSONL file as a resumable batch job.

    \b
    alter-edge run bundle --task sentiment "a fine film" "a dull film"
    alter-edge run bundle --input rows.jsonl --output out.jsonl --batch-size 16
    alter-edge run bundle --input rows.jsonl --output out.jsonl --resume
    alter-edge run bundle --input rows.parquet --output out.jsonl --ray auto --actors 8

    A bad row becomes an error record {"id", "line", "error"}; the exit status is 3 when some
    rows failed. Classify tasks score their labels (the answer is always a label).
    """
    if input_path is not None:
        if texts:
            raise click.UsageError("give texts or --input, not both")
        _run_file(ctx, bundle, input_path, output_path, task, batch_size, max_new_tokens, truncate,
                  generate_labels, resume, quiet, ray_address, actors, no_prefix_cache, threads, precision)
        return
    if not texts:
        raise click.UsageError("give texts to run, or --input FILE --output FILE")
    if task is None:
        raise click.UsageError("--task is required with texts")
    model = _load(bundle, threads, precision, tasks=[task], prefix_cache=not no_prefix_cache)
    spec = model.tasks.get(task)
    if spec.kind == "classify" and spec.labels and not generate_labels:
        for text, c in zip(texts, model.classify(list(texts), task, truncate=truncate), strict=True):
            if as_json:
                click.echo(json.dumps({"input": text, "label": c.label, "probability": c.probability,
                                       "scores": c.scores}, ensure_ascii=False))
            else:
                click.echo(f"{c.label}\t{c.probability:.3f}")
        return
    if stream:
        for text in texts:
            for ev in model.stream(text, task=task, max_new_tokens=max_new_tokens, truncate=truncate):
                click.echo(ev.text, nl=False)
            click.echo()
        return
    for text, g in zip(texts, model.generate(list(texts), task=task, max_new_tokens=max_new_tokens,
                                             truncate=truncate),
                       strict=True):
        if as_json:
            click.echo(json.dumps({"input": text, "output": g.text, "finish_reason": g.finish_reason},
                                  ensure_ascii=False))
        else:
            click.echo(g.text)


def _run_file(ctx, bundle, input_path, output_path, task, batch_size, max_new_tokens, truncate, generate_labels,
              resume, quiet, ray_address, actors, no_prefix_cache, threads, precision) -> None:
    """``run --input``: the batch job, local or on Ray; exits 3 when some rows failed."""
    if output_path is None:
        raise click.UsageError("--input needs --output")
    from alter_edge.runtime.batch import BatchOptions, check_paths, output_target, run_jsonl

    check_paths(input_path, output_path)  # before the model loads
    partial = f"{output_target(output_path)}.partial"  # beside the file a symlink leads to
    opts = BatchOptions(task, batch_size, max_new_tokens, truncate, generate_labels)
    if ray_address is not None:
        if resume:
            raise click.UsageError("--resume is for the local job; a Ray job retries failed actors itself")
        if no_prefix_cache:
            raise click.UsageError("--no-prefix-cache is for the local job; the Ray job's actors keep "
                                   "the prefix cache on")
        summary = _run_ray(bundle, input_path, output_path, opts, ray_address, actors, threads, precision,
                           quiet)
    elif input_path.suffix == ".parquet":
        raise click.UsageError("Parquet input is read through Ray Data: add --ray")
    try:
        if ray_address is None:
            summary = run_jsonl(_load(bundle, threads, precision, prefix_cache=not no_prefix_cache),
                                input_path, output_path, opts,
                                resume=resume, progress=not quiet)
    except KeyboardInterrupt:
        click.echo(f"interrupted; progress is saved in {partial}: rerun with --resume",
                   err=True)
        ctx.exit(EXIT_INTERRUPTED)
    click.echo(f"{summary.rows} rows ({summary.resumed} resumed), {summary.failed} failed, "
               f"{summary.seconds:.1f}s -> {output_path}", err=True)
    for e in summary.errors[:5]:
        click.echo(f"  {cli_message(e)}", err=True)
    if summary.failed:
        ctx.exit(EXIT_ROWS_FAILED)


def _run_ray(bundle, input_path, output_path, opts, address, actors, threads, precision, quiet):
    try:
        from alter_edge.runtime import ray as ray_job
    except ModuleNotFoundError as e:
        raise click.ClickException(missing_extra_message("run --ray", "ray", e.name or "ray")) from e
    ray_job.init(None if address == "local" else address)
    ropts = ray_job.RayOptions(actors=actors, threads_per_actor=threads or 1, precision=precision)
    return ray_job.run_file(bundle, input_path, output_path, opts, ropts, progress=not quiet)


@click.command("bench", context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--task", default=None, help="Task to time (default: the first generate task).")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--new-tokens", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--optimization", type=click.Choice(list(OPT_LEVELS)), default="all", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--engine", type=click.Choice(["onnxruntime", "genai"]), default="onnxruntime", show_default=True,
              help="Decode loop: the runtime's own, or onnxruntime-genai's generator (needs alter-edge[genai]).")
@threads_precision_options
@handle_errors()
def bench_cmd(bundle, task, prompt_tokens, new_tokens, repeats, optimization, as_json, engine, threads,
              precision) -> None:
    """Time a bundle: load, time to first token, decode tok/s (batch 1 and 8), classify rows/s,
    peak RSS.

    \b
    alter-edge bench bundle --threads 2 --json
    """
    from alter_edge.runtime.bench import run_bench

    model = _load(bundle, threads, precision, optimization, tasks=[task] if task else None, engine=engine)
    res = run_bench(model, task, prompt_tokens, new_tokens, repeats)
    res["threads"] = threads
    if as_json:
        echo_json(res)
        return
    for k, v in res.items():
        click.echo(f"{k:>18}: {v}")
