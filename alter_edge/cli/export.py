"""``alter-edge export`` and ``alter-edge inspect`` (torch is imported inside the commands).

Every export flag is declared once, in ``EXPORT_OPTIONS``, and turned into the library's
``ExportOptions`` in one function, ``export_options``: a new flag touches those two places.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .common import CONTEXT, echo_json, handle_errors

EXPORT_OPTIONS = [
    click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                 help="Bundle directory to create."),
    click.option("--task", "tasks", default="all", show_default=True,
                 help="Per-task graphs: 'all', comma-separated names, or 'none' (the multi-task graph only). "
                      "A per-task graph holds only its task's mixture and reads the base and adapter "
                      "weights from the bundle's shared weight file."),
    click.option("--int8", is_flag=True, help="int8 graphs: 8-bit block-wise weights (MatMulNBits) on every "
                                             "matmul, the embedding too."),
    click.option("--int4", is_flag=True, help="int4 graphs: the same with 4-bit base weights."),
    click.option("--fp32", is_flag=True, help="fp32 graphs (the default when neither --int8 nor --int4 is "
                                             "given; otherwise the fp32 reference is built for the checks "
                                             "and dropped)."),
    click.option("--merged", is_flag=True, help="Per-task graphs with the LoRA adapters merged into the weights "
                                               "(an app that ships one task: no adapter ops, but its own full "
                                               "copy of the weights)."),
    click.option("--block-size", type=int, default=32, show_default=True,
                 help="Weights per scale of the MatMulNBits graphs."),
    click.option("--accuracy-level", type=click.IntRange(0, 4), default=4, show_default=True,
                 help="MatMulNBits compute: 4 = int8 activations (fastest), 0 = fp32 activations."),
    click.option("--adapter-bits", type=click.Choice(["4", "8"]), default=None,
                 callback=lambda _ctx, _param, v: None if v is None else int(v),
                 help="Bits of the adapter factors in quantized graphs. Default: the graph's own (an int4 "
                      "graph's 4-bit lora B joins the base projection's matmul); 8 in an int4 graph keeps "
                      "them at 8 bits and adds their delta apart."),
    click.option("--target", type=click.Choice(["native", "web"]), default="native", show_default=True,
                 help="Where the int8 graphs run best: native (MatMulNBits, block-wise: onnxruntime's x86/ARM "
                      "kernels) or web (DynamicQuantizeLinear + MatMulInteger per output channel: fast in "
                      "onnxruntime-web's WASM build, where MatMulNBits is slow). int8 only."),
    click.option("--int4-method", type=click.Choice(["rtn", "gptq"]), default="gptq", show_default=True,
                 help="int4 rounding: rtn = round to nearest; gptq = error compensation from the calibration "
                      "rows' activations (the checkpoint's own train rows, or --data)."),
    click.option("--int4-zero-points/--no-int4-zero-points", default=True, show_default=True,
                 help="Asymmetric 4-bit blocks: a zero point per block (MatMulNBits' zero_points)."),
    click.option("--int4-8bit", default=None,
                 help="Matrices kept at 8 bits in int4 graphs, a comma list: lm_head (the tied embedding and "
                      "lm_head), qkv, o, up, down (in every block), first, last, layers.<i>, layers.<i>.<site>; "
                      "auto: the candidates whose 4 bits cost the most task loss on the calibration rows, "
                      "within --int4-8bit-fraction (and --int4-8bit-mb); none: every matrix at 4 bits."),
    click.option("--int4-8bit-block-size", type=int, default=64, show_default=True,
                 help="Block size of the 8-bit matrices of an int4 graph (where the input width is whole blocks; "
                      "else --block-size)."),
    click.option("--int4-8bit-fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True,
                 help="--int4-8bit auto: the most weights kept at 8 bits, a fraction of the base's weights."),
    click.option("--int4-8bit-mb", type=float, default=None,
                 help="--int4-8bit auto: also, the most MB the 8-bit matrices may add to the int4 weights."),
    click.option("--int4-accuracy-level", type=click.IntRange(0, 4), default=None,
                 help="MatMulNBits accuracy_level of the 4-bit matmuls (default: --accuracy-level)."),
    click.option("--calibration-rows", type=click.IntRange(min=1), default=16, show_default=True,
                 help="Train rows per task that calibrate the int4 quantizer."),
    click.option("--atol", type=float, default=3e-4, show_default=True,
                 help="fp32 parity tolerance against PyTorch: max |logits diff| at valid positions."),
    click.option("--int8-budget", type=float, default=1.0, show_default=True,
                 help="Max mean per-task metric drop of an int8 graph on the dev split, in points (a task fails "
                      "only if its paired 95% interval also excludes zero)."),
    click.option("--int4-budget", type=float, default=5.0, show_default=True,
                 help="Max mean per-task metric drop of an int4 graph, in points."),
    click.option("--int8-min-top1", "min_top1_int8", type=float, default=0.85, show_default=True,
                 help="Min top-1 agreement of an int8 graph with fp32 along fp32's greedy path (16 steps)."),
    click.option("--int4-min-top1", "min_top1_int4", type=float, default=0.70, show_default=True,
                 help="Min top-1 agreement of an int4 graph with fp32."),
    click.option("--heldout-rows", type=click.IntRange(min=1), default=None,
                 help="Held-out rows per task for the quantized-metric check (default: the whole dev split)."),
    click.option("--prune-threshold", type=float, default=1e-5, show_default=True,
                 help="ffn: experts with a smaller mixture weight are left out of per-task graphs."),
    click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="The checkpoint's training JSONL: its dev split is the held-out set for the "
                      "quantized-metric check. Default: the data the checkpoint records (the built-in "
                      "mix, or its file if still there); failing that, fp32 predictions are the reference."),
    click.option("--base-model", default=None, help="Override the base model the checkpoint records."),
    click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime threads for the checks."),
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
    """Export a checkpoint to a validated ONNX bundle (format 2: graphs built from the weights,
    one copy of the weights per precision; every graph is checked, and a failed check exits
    non-zero and leaves no bundle).

    \b
    alter-edge export runs/mta --task all --int8 --out bundle
    alter-edge export runs/mta --task sentiment,nli --int4 --block-size 64 --out bundle
    alter-edge export runs/mta --task answer --merged --int8 --out app-bundle
    """
    from alter_edge.export.pipeline import export_checkpoint
    from alter_edge.export.report import ValidationReport
    from alter_edge.runtime.manifest import Manifest

    out = params["out"]
    manifest = Manifest.from_json(export_checkpoint(checkpoint, out, export_options(params)))
    for line in summary_lines(manifest, ValidationReport.read(out), out):
        click.echo(line)
    click.echo(f"bundle: {out} (validation.json lists every check)")


def summary_lines(manifest, report, root: Path) -> list[str]:
    """Graphs with sizes and node counts, the weight files, and the quantized checks
    (``manifest``: a ``runtime.manifest.Manifest``; ``report``: an ``export.report.ValidationReport``)."""
    lines = []
    for g in manifest.graphs:
        facts = report.facts.get("build", {}).get(g["path"], {})
        nodes = f"{facts['nodes']} nodes" if facts else ""
        lines.append(f"{g['path']:<32} {g.get('task') or '(multi-task)':<16} {g['precision']:<5} "
                     f"{g['bytes'] / 1e6:9.2f} MB  {nodes}")
    weights = sorted({w for g in manifest.graphs for w in g.get("external_data", [])})
    for w in weights:
        size = (root / w).stat().st_size / 1e6 if (root / w).is_file() else float("nan")
        lines.append(f"{w:<32} {'(shared weights)':<16} {'':<5} {size:9.2f} MB")
    for c in report.quantized_checks():
        drops = ", ".join(f"{t} {d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for (t, d), (lo, hi)
                          in zip(c["metric_drop_points"].items(), c["metric_drop_interval95"].values(), strict=True))
        lines.append(f"{c['graph']}: top-1 {c['top1_agreement']:.3f}; drop in points (95% interval): {drops}")
    lines.append(f"validation: {sum(c['passed'] for c in report.checks)} checks passed "
                 f"(atol {report.atol}, {report.steps} greedy steps)")
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
