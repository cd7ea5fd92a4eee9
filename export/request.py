"""The checks of an export request that run before any torch work: the output is not an
input and may be replaced, the checkpoint is complete and matches its tasks, the tasks asked
for exist and can have per-task graphs."""

from __future__ import annotations

import json
from pathlib import Path

from alter_edge.errors import BundleError, CheckpointError, OutputError
from alter_edge.runtime.bundle import BUNDLE_FORMAT
from alter_edge.tasks import TaskRegistry

from .options import ExportOptions


def check_request(checkpoint: Path, out: Path, opts: ExportOptions) -> None:
    """What fails before any torch work: an ``out`` that is, holds or lies in an input, an
    existing ``out`` (without ``overwrite``, or that is not a bundle), a missing or incomplete
    checkpoint, what an encoder-decoder's export does not build (merged graphs, int4 8-bit
    groups), tasks.json against the adapters' task count, per-task graphs of a per-token gate,
    an unknown task name."""
    from alter_edge.families import is_seq2seq
    from alter_edge.training.checkpoint import check_task_count, read_checkpoint_meta

    meta = read_checkpoint_meta(checkpoint)
    model_type = meta["base_model"].get("model_type")
    if is_seq2seq(str(model_type)):
        check_seq2seq_request(checkpoint, str(model_type), opts)
    inputs = [("checkpoint", checkpoint), ("`data` file", opts.data)]
    base_path = meta["base_model"].get("path")
    if opts.base_model is None and isinstance(base_path, str) and base_path:
        inputs.append(("checkpoint's base model", Path(base_path)))
    elif opts.base_model is not None and Path(opts.base_model).exists():
        inputs.append(("`base_model`", Path(opts.base_model)))
    check_not_an_input(out, inputs)
    if out.exists() or out.is_symlink():
        if not opts.overwrite:
            raise BundleError(f"{out} already exists; pass `overwrite` to replace it")
        check_replaceable(out)
    tasks = TaskRegistry.load(checkpoint / "tasks.json")
    check_task_count(checkpoint, tasks, meta["mta_config"])
    gate = meta["mta_config"].get("gate", "task")
    if gate != "task" and (opts.tasks or opts.merged):
        raise CheckpointError(f"{checkpoint} was trained with gate {gate!r}: its mixture changes per token, so "
                              "it does not fold into per-task graphs; export the multi-task graph only")
    if opts.tasks:
        tasks.resolve(opts.tasks)


def check_seq2seq_request(checkpoint: Path, model_type: str, opts: ExportOptions) -> None:
    """What the encoder-decoder export does not build: int4 groups kept at 8 bits."""
    if opts.int4_8bit:
        raise CheckpointError(f"{checkpoint} is an encoder-decoder ({model_type}): int4 groups kept at 8 bits "
                              "(`int4_8bit`) are built for decoder graphs only")


def check_not_an_input(out: Path, inputs: list[tuple[str, Path | None]]) -> None:
    """``out`` is not an input, does not hold one and does not lie inside one (with symlinks
    resolved): an export never writes over, or into, what it reads."""
    o = out.resolve()
    for what, path in inputs:
        if path is None:
            continue
        p = Path(path).resolve()
        if o == p:
            how = "is"
        elif p.is_relative_to(o):
            how = "contains"
        elif o.is_relative_to(p):
            how = "lies inside"
        else:
            continue
        raise OutputError(f"`out` {out} {how} the {what} {path}: an export never writes over or into its input; "
                          "choose an `out` outside it")


def check_replaceable(out: Path) -> None:
    """``overwrite`` replaces an empty folder or an alter-edge bundle (its manifest.json says
    so), nothing else."""
    if out.is_symlink():
        raise OutputError(f"`out` {out} is a symlink: `overwrite` replaces only a bundle folder itself; "
                          "remove the link or choose another `out`")
    if out.is_dir() and not any(out.iterdir()):
        return
    manifest = out / "manifest.json"
    fmt = None
    if out.is_dir() and manifest.is_file() and not manifest.is_symlink():
        try:
            fmt = json.loads(manifest.read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, RecursionError, AttributeError):
            fmt = None
    if fmt != BUNDLE_FORMAT:
        raise OutputError(f"`out` {out} exists and is not an alter-edge bundle (no manifest.json with format "
                          f"{BUNDLE_FORMAT!r}): `overwrite` replaces only a bundle or an empty folder; move it "
                          "away yourself or choose another `out`")
