"""``alter-edge export`` and ``alter-edge inspect`` (torch is imported inside the commands).

Every export flag is declared once, in ``EXPORT_OPTIONS``, and turned into the library's
``ExportOptions`` in one function, ``export_options``: a new flag touches those two places.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .common import CONTEXT, echo_json, handle_errors

EXPORT_OPTIONS = [
    click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                 help="Bundle directory to create."),
    click.option("--task", "tasks", default="all", show_default=True,
                 help="Per-task graphs: 'all', comma-separated names, or 'none' (multi-task graph only)."),
    click.option("--int8", is_flag=True, help="Also write int8 graphs (see --int8-method)."),
    click.option("--int8-method", type=click.Choice(["blockwise", "dynamic"]), default="blockwise",
                 show_default=True,
                 help="blockwise: 8-bit MatMulNBits, weights and activations quantized per block of "
                      "--block-size; dynamic: per-channel int8 weights, activations quantized per tensor "
                      "(MatMulInteger)."),
    click.option("--int4", is_flag=True, help="Also write weight-only 4-bit graphs (MatMulNBits)."),
    click.option("--block-size", type=int, default=32, show_default=True,
                 help="Weights per scale of the MatMulNBits graphs (int4, blockwise int8)."),
    click.option("--ort-format", is_flag=True, help="Also write .ort files and a reduced-operator config."),
    click.option("--atol", type=float, default=3e-4, show_default=True,
                 help="fp32 parity tolerance: max |logits diff| at unpadded positions "
                      "(tiny models stay under 1e-4; SmolLM2-135M's 30 layers reach ~1.7e-4 on long prompts)."),
    click.option("--int8-budget", type=float, default=1.0, show_default=True,
                 help="Max per-task metric drop of an int8 graph, in points."),
    click.option("--int4-budget", type=float, default=5.0, show_default=True,
                 help="Max per-task metric drop of an int4 graph, in points."),
    click.option("--int8-min-top1", "min_top1_int8", type=float, default=0.85, show_default=True,
                 help="Min top-1 agreement of an int8 graph with fp32 at every unpadded prompt position."),
    click.option("--int4-min-top1", "min_top1_int4", type=float, default=0.85, show_default=True,
                 help="Min top-1 agreement of an int4 graph with fp32."),
    click.option("--prune-threshold", type=float, default=1e-5, show_default=True,
                 help="ffn/bottleneck: adapters with a smaller mixture weight are pruned from per-task graphs."),
    click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="The checkpoint's training JSONL: its dev split is the held-out slice for the "
                      "quantized-metric check. Default: the data the checkpoint records (the built-in "
                      "mix, or its file if still there); failing that, fp32 predictions are the reference."),
    click.option("--base-model", default=None, help="Override the base model the checkpoint records."),
    click.option("--overwrite", is_flag=True, help="Replace an existing --out."),
    click.option("--quiet", is_flag=True, help="No progress bar."),
]


def export_options(params: dict[str, Any]):
    """The flags of ``export`` as the library's ``ExportOptions`` (option names match its fields)."""
    from alter_edge.export.pipeline import ExportOptions

    params = dict(params)
    params.pop("out")
    tasks = params.pop("tasks")
    return ExportOptions(tasks=None if tasks.strip() == "none" else tasks, progress=not params.pop("quiet"),
                         **params)


def _with_export_options(fn):
    for option in reversed(EXPORT_OPTIONS):
        fn = option(fn)
    return fn


@click.command("export", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@_with_export_options
@handle_errors(extra="export")
def export_cmd(checkpoint: Path, **params: Any) -> None:
    """Export a checkpoint to a validated ONNX bundle (every graph is checked; a failed check
    exits non-zero and leaves no bundle).

    \b
    alter-edge export runs/mta --task all --int8 --out bundle
    alter-edge export runs/mta --task sentiment,nli --int4 --block-size 64 --out bundle
    alter-edge export runs/mta --task none --ort-format --out bundle --overwrite
    """
    from alter_edge.export.pipeline import export_checkpoint

    out = params["out"]
    manifest = export_checkpoint(checkpoint, out, export_options(params))
    for line in summary_lines(manifest, json.loads((out / "validation.json").read_text())):
        click.echo(line)
    click.echo(f"bundle: {out} (validation.json lists every check)")


def summary_lines(manifest: dict, validation: dict) -> list[str]:
    """Graphs with sizes and node counts, then per task what folding merged or pruned."""
    lines = []
    for g in manifest["graphs"]:
        opt = validation.get("optimization", {}).get(g["path"], {})
        nodes = f"{opt['nodes_before']} -> {opt['nodes_after']} nodes" if opt else ""
        lines.append(f"{g['path']:<40} {g.get('task') or '(multi-task)':<16} {g['precision']:<5} "
                     f"{g['bytes'] / 1e6:9.2f} MB  {nodes}")
    for task, spec in validation.get("specialization", {}).items():
        runs: list[tuple[int, int, str]] = []  # (first block, last block, what folding did)
        for layer, b in sorted(spec["blocks"].items(), key=lambda kv: int(kv[0])):
            what = f"merged {','.join(b['merged'])}" if "merged" in b else f"kept {b['kept']} pruned {b['pruned']}"
            if runs and runs[-1][2] == what and runs[-1][1] == int(layer) - 1:
                runs[-1] = (runs[-1][0], int(layer), what)
            else:
                runs.append((int(layer), int(layer), what))
        parts = [f"block {a}: {w}" if a == b else f"blocks {a}-{b}: {w}" for a, b, w in runs]
        lines.append(f"task {task} ({spec['kind']}): {'; '.join(parts)}; {spec['parameters']:,} parameters")
    checks = validation.get("checks", [])
    lines.append(f"validation: {sum(c['passed'] for c in checks)} checks passed "
                 f"(atol {validation.get('atol')}, {validation.get('greedy_steps')} greedy steps)")
    return lines


@click.command("inspect", context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@handle_errors()
def inspect_cmd(bundle, as_json):
    """Print what a bundle holds and verify every file's sha256 (a changed file is named).

    \b
    alter-edge inspect bundle
    """
    from alter_edge.export.bundle import describe, verify_bundle

    manifest = verify_bundle(bundle)
    if as_json:
        echo_json(manifest)
        return
    for line in describe(manifest):
        click.echo(line)
    click.echo("hashes: ok")
