"""Bundle manifest: write it, and verify a bundle for ``alter-edge inspect`` (torch-free).

The format is docs/bundle-format.md; reading and checking a bundle is the runtime's loader
(``alter_edge.runtime.bundle``), and ``verify_bundle`` is the runtime's
(``alter_edge.runtime.verify_bundle``), so the exporter's checks and the runtime's are the same code.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from alter_edge.io import atomic_write_text, sha256_file
from alter_edge.runtime.bundle import BUNDLE_FORMAT, SUPPORTED_FORMAT_VERSIONS
from alter_edge.runtime.manifest import Manifest
from alter_edge.runtime.model import verify_bundle

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "describe", "verify_bundle", "write_manifest"]

FORMAT = BUNDLE_FORMAT
FORMAT_VERSION = max(SUPPORTED_FORMAT_VERSIONS)  # what the exporter writes
MANIFEST = "manifest.json"


def write_manifest(bundle: Path, manifest: Manifest) -> Manifest:
    """Hash every graph of ``manifest.graphs`` (``{path, task, precision, ...}``, ``path``
    relative) and every other file under ``bundle``, and write manifest.json; returns the
    manifest as written (``created``, ``graphs`` with their hashes, ``files``)."""
    bundle = Path(bundle)
    graph_paths = {g["path"] for g in manifest.graphs}
    entries = []
    for g in manifest.graphs:
        p = bundle / g["path"]
        entries.append({**g, "sha256": sha256_file(p), "bytes": p.stat().st_size})
    files = {}
    for p in sorted(bundle.rglob("*")):
        rel = p.relative_to(bundle).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in graph_paths:
            files[rel] = sha256_file(p)
    written = replace(manifest, format=FORMAT, format_version=FORMAT_VERSION, graphs=entries, files=files,
                      created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    atomic_write_text(bundle / MANIFEST, json.dumps(written.to_json(), indent=2) + "\n")
    return written


def describe(manifest: dict) -> list[str]:
    """Human-readable lines for ``alter-edge inspect``."""
    kv = manifest.get("kv_cache", {})
    base = manifest.get("base_model", {})
    lines = [
        f"format: {manifest['format']} v{manifest['format_version']}  created {manifest.get('created', '?')}",
        f"base model: {base.get('reference', '?')} ({base.get('model_type', '?')}, weights {str(base.get('sha256', ''))[:12]})",
        f"checkpoint: {str(manifest.get('checkpoint_sha256', ''))[:12]}  opset {manifest.get('opset')}  "
        f"eos {manifest.get('eos_token_id')} pad {manifest.get('pad_token_id')}",
        f"kv cache: {kv.get('num_layers')} layers x {kv.get('num_kv_heads')} heads x {kv.get('head_dim')}",
        f"tasks: {', '.join(manifest.get('tasks', []))}",
        "graphs:",
    ]
    for g in manifest["graphs"]:
        task = g.get("task") or "(multi-task)"
        precision = g.get("precision", "fp32")  # what the runtime reads when it is absent
        lines.append(f"  {g['path']:<32} {task:<16} {precision:<5} {g.get('mode', ''):<9} "
                     f"{g.get('bytes', 0) / 1e6:9.2f} MB  {g['sha256'][:12]}")
    lines.append("files:")
    lines += [f"  {rel:<40} {digest[:12]}" for rel, digest in manifest["files"].items()]
    return lines


def bundle_files(exp, checkpoint: Path, tmp: Path, t_start: float, entries: list[dict], **fields) -> Manifest:
    """What every export writes beside its graphs: the checkpoint's tokenizer and tasks,
    ``validation.json`` (``exp.report`` with ``exp.info`` and the options as its facts); returns
    the manifest with the checkpoint's facts and ``fields`` (the graph contract's own)."""
    from alter_edge.training.checkpoint import checkpoint_hash

    ck, tc = exp.ck, exp.ck.train_config
    shutil.copy(checkpoint / "tokenizer.json", tmp / "tokenizer.json")
    shutil.copy(checkpoint / "tasks.json", tmp / "tasks.json")
    exp.info["seconds"] = round(time.perf_counter() - t_start, 1)
    exp.info["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(exp.opts).items()}
    exp.report.facts = exp.info
    exp.report.write(tmp)
    base = ck.base_info
    return Manifest(
        checkpoint_sha256=checkpoint_hash(checkpoint),
        base_model={"reference": base.reference, "model_type": base.model_type, "sha256": ck.base_sha256,
                    **({"fine_tuned": True} if ck.base_trained else {})},
        adapter_kind=ck.mta_config.adapter_kind, eos_token_id=exp.eos, pad_token_id=exp.pad,
        generation={"max_new_tokens": tc.eval_max_new_tokens, "max_prompt_tokens": tc.max_prompt_tokens},
        tasks=ck.tasks.names, graphs=entries, **fields)

