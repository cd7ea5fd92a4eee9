"""Bundle manifest: write it, read it back, verify every hash (torch-free).

The format is docs/bundle-format.md; the runtime has its own loader, this module is what
``alter-edge inspect`` and the exporter use.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from alter_edge.errors import BundleError
from alter_edge.io import atomic_write_text, read_json, sha256_file

FORMAT = "alter-edge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def write_manifest(bundle: Path, meta: dict, graphs: list[dict]) -> dict:
    """Hash every graph and every other file under ``bundle`` and write manifest.json.

    ``graphs``: ``{path, task, precision, inputs, outputs, ...}`` with ``path`` relative."""
    bundle = Path(bundle)
    graph_paths = {g["path"] for g in graphs}
    entries = []
    for g in graphs:
        p = bundle / g["path"]
        entries.append({**g, "sha256": sha256_file(p), "bytes": p.stat().st_size})
    files = {}
    for p in sorted(bundle.rglob("*")):
        rel = p.relative_to(bundle).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in graph_paths:
            files[rel] = sha256_file(p)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **meta, "graphs": entries, "files": files}
    atomic_write_text(bundle / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(bundle: Path) -> dict:
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise BundleError(f"bundle not found: {bundle} is not a directory")
    if not path.is_file():
        raise BundleError(f"{bundle} is not an alter-edge bundle: no {MANIFEST}")
    manifest = read_json(path, BundleError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format is not {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {manifest.get('format_version')} is not supported "
                          f"(this alter-edge reads {FORMAT_VERSION})")
    for key in ("graphs", "files"):
        if key not in manifest:
            raise BundleError(f"{path} lacks {key!r}")
    return manifest


def verify_bundle(bundle: Path) -> dict:
    """Read the manifest and check every listed file's sha256; a missing, changed or unlisted
    file raises BundleError naming it. Returns the manifest."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    expected = {g["path"]: g["sha256"] for g in manifest["graphs"]} | dict(manifest["files"])
    for rel, digest in expected.items():
        p = bundle / rel
        if not p.is_file():
            raise BundleError(f"bundle {bundle}: {rel} is listed in the manifest but missing")
        if sha256_file(p) != digest:
            raise BundleError(f"bundle {bundle}: {rel} has been modified (sha256 does not match the manifest)")
    for p in bundle.rglob("*"):
        rel = p.relative_to(bundle).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in expected:
            raise BundleError(f"bundle {bundle}: {rel} is not listed in the manifest")
    return manifest


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
        lines.append(f"  {g['path']:<40} {task:<16} {g['precision']:<5} {g['bytes'] / 1e6:9.2f} MB  {g['sha256'][:12]}")
    lines.append("files:")
    lines += [f"  {rel:<40} {digest[:12]}" for rel, digest in manifest["files"].items()]
    return lines
