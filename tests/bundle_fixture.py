"""Test bundles for the runtime, written by the real exporter (bundle format v2).

The tests only call ``BUILD_BUNDLE(checkpoint_dir, out_dir, task_graphs=...)``: fp32 graphs, the
multi-task graph plus a per-task graph for each name in ``task_graphs``, every one validated
against PyTorch by the exporter itself.
"""

from __future__ import annotations

from pathlib import Path


def build_bundle_with_exporter(checkpoint_dir: Path, out_dir: Path, task_graphs: tuple[str, ...] = (),
                               **options) -> Path:
    """The real exporter (validated fp32 graphs, generation defaults from the checkpoint)."""
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    export_checkpoint(Path(checkpoint_dir), Path(out_dir),
                      ExportOptions(tasks=",".join(task_graphs) or None, progress=False, **options))
    return Path(out_dir)


BUILD_BUNDLE = build_bundle_with_exporter
