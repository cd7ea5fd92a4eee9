"""A checkpoint is a directory:

- ``adapters.safetensors``: adapter and mixture tensors only (the base stays where it is);
- ``mta_config.json``, ``train_config.json``, ``tasks.json``, ``tokenizer.json``;
- ``base_model.json``: the base model's reference, local path, model_type and weight hash;
- ``state.json``: progress (stage, step, complete), per-stage dev evaluations;
- ``optimizer.pt``: only while a run is incomplete, for ``--resume`` (tensors and numbers
  only, read back with ``weights_only=True``);
- ``base.safetensors``: only where the base model trained too (``train_base``): the whole
  fine-tuned model's weights, loaded over the recorded base (whose hash is still checked) when
  the checkpoint loads; ``Checkpoint.base_sha256`` is then this file's hash.

Every save writes a sibling temp directory and renames it into place, so a killed run leaves
either the previous checkpoint or the new one, never half of one. Only the files above
(``OWNED_FILES``) are the trainer's: anything else in the folder (a user's notes, reports) is
carried into each new save untouched (``alter_edge.io.atomic_dir``'s ``owned``). A save that
runs out of disk space is one ``OutputError`` naming the folder and the bytes it needs; the
previous checkpoint stays as it was.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from alter_edge.base_model import BaseModelInfo, load_base_model, load_tokenizer, weights_hash
from alter_edge.config import MTAConfig, TrainConfig, save_json
from alter_edge.errors import CheckpointError
from alter_edge.inject import MTAModel
from alter_edge.io import atomic_dir, disk_full_error, is_disk_full, read_json
from alter_edge.tasks import TaskRegistry

REQUIRED_FILES = (
    "adapters.safetensors", "mta_config.json", "train_config.json", "tasks.json",
    "tokenizer.json", "base_model.json", "state.json",
)
OPTIMIZER_FILE = "optimizer.pt"
BASE_FILE = "base.safetensors"  # the trained base model's weights (train_base runs only)
# what a save writes: the only entries of a run folder a save may replace or remove
OWNED_FILES = frozenset({*REQUIRED_FILES, OPTIMIZER_FILE, BASE_FILE})
CHECKPOINT_FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    model: MTAModel
    tasks: TaskRegistry
    tokenizer: object  # tokenizers.Tokenizer
    base_info: BaseModelInfo
    train_config: TrainConfig
    mta_config: MTAConfig
    state: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def base_trained(self) -> bool:
        return self.path is not None and (Path(self.path) / BASE_FILE).is_file()

    @property
    def base_sha256(self) -> str:
        """The hash of the base weights this checkpoint runs on: the recorded base's, or (the base
        trained too) its own ``base.safetensors``'s."""
        if self.base_trained:
            from alter_edge.io import sha256_file

            return sha256_file(Path(self.path) / BASE_FILE)
        return self.base_info.sha256

    @property
    def eos_id(self) -> int:
        from alter_edge.base_model import special_ids

        return special_ids(self.model.base.config)[0]

    @property
    def pad_id(self) -> int:
        from alter_edge.base_model import special_ids

        return special_ids(self.model.base.config)[1]


def save_checkpoint(
    out: Path,
    model: MTAModel,
    tasks: TaskRegistry,
    train_config: TrainConfig,
    base_info: BaseModelInfo,
    state: dict,
    optimizer_state: dict | None = None,
) -> None:
    out = Path(out)
    tensors = model.mta_state_dict()
    optimizer_bytes = None
    if optimizer_state is not None:  # serialised first, so a full disk fails as an OSError
        buf = io.BytesIO()
        torch.save(optimizer_state, buf)
        optimizer_bytes = buf.getvalue()
    try:
        with atomic_dir(out, overwrite=True, owned=OWNED_FILES) as tmp:
            save_file(tensors, str(tmp / "adapters.safetensors"),
                      metadata={"format": "alter-edge-adapters", "version": str(CHECKPOINT_FORMAT_VERSION)})
            if train_config.train_base:  # the whole model: safetensors keeps tied weights once
                save_model(model.base, str(tmp / BASE_FILE),
                           metadata={"format": "alter-edge-base", "version": str(CHECKPOINT_FORMAT_VERSION)})
            save_json(tmp / "mta_config.json", model.cfg.to_dict())
            save_json(tmp / "train_config.json", train_config.to_dict())
            tasks.save(tmp / "tasks.json")
            shutil.copy(Path(base_info.path) / "tokenizer.json", tmp / "tokenizer.json")
            save_json(tmp / "base_model.json", base_info.to_dict())
            save_json(tmp / "state.json", {"format_version": CHECKPOINT_FORMAT_VERSION, **state})
            if optimizer_bytes is not None:
                (tmp / OPTIMIZER_FILE).write_bytes(optimizer_bytes)
    except Exception as e:
        if not is_disk_full(e):
            raise
        needed = (sum(t.numel() * t.element_size() for t in tensors.values()) + len(optimizer_bytes or b"")
                  + (Path(base_info.path) / "tokenizer.json").stat().st_size + 64 * 1024)
        outcome = "the previous checkpoint there is unchanged" if out.is_dir() else "no checkpoint was written"
        raise disk_full_error(f"saving the checkpoint {out}", out.parent, needed, outcome, "about") from e


def check_task_count(path: Path, tasks: TaskRegistry, mta_config: dict) -> None:
    """tasks.json names as many tasks as the adapters were built for (``num_tasks``): a task id
    past the mixture table would fail deep in a forward pass or an export."""
    n = mta_config.get("num_tasks") if isinstance(mta_config, dict) else None
    if isinstance(n, int) and not isinstance(n, bool) and len(tasks) != n:
        raise CheckpointError(f"{path}: tasks.json has {len(tasks)} tasks ({', '.join(tasks.names)}) but "
                              f"mta_config.json has num_tasks {n}: the task registry does not belong to these "
                              "adapters (restore the checkpoint's own tasks.json)")


def _read_json(path: Path) -> dict:
    obj = read_json(path, CheckpointError)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return obj


def read_checkpoint_meta(path: Path) -> dict:
    """The JSON parts of a checkpoint (no torch work); raises if files are missing."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path} is not a directory")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a complete alter-edge checkpoint: missing {', '.join(missing)}")
    return {
        "mta_config": _read_json(path / "mta_config.json"),
        "train_config": _read_json(path / "train_config.json"),
        "base_model": _read_json(path / "base_model.json"),
        "state": _read_json(path / "state.json"),
    }


def load_checkpoint(path: Path, base_model: str | None = None, check_hash: bool = True) -> Checkpoint:
    """Rebuild the MTA model: load the base (``base_model`` overrides the recorded reference),
    check its weight hash against the one recorded at training time, inject, load adapters."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    try:
        tasks = TaskRegistry.load(path / "tasks.json")
        mta_cfg = MTAConfig.from_dict(meta["mta_config"])
        train_cfg = TrainConfig.from_dict(meta["train_config"])
        recorded = BaseModelInfo(**meta["base_model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: config files do not parse ({e})") from e
    check_task_count(path, tasks, meta["mta_config"])
    ref = base_model or recorded.reference
    base, _tok, info = load_base_model(ref if Path(ref).exists() or base_model else _prefer_path(recorded))
    if check_hash and info.sha256 != recorded.sha256:
        raise CheckpointError(
            f"{path} was trained on base model {recorded.reference} (weights sha256 {recorded.sha256[:12]}), "
            f"but {ref} has weights {info.sha256[:12]}: pass the matching `base_model`"
        )
    model = MTAModel(base, mta_cfg)
    try:
        if (path / BASE_FILE).is_file():  # the base trained too: its weights over the recorded base's
            load_model(model.base, str(path / BASE_FILE))
        model.load_mta_state_dict(load_file(str(path / "adapters.safetensors")))
    except Exception as e:
        raise CheckpointError(f"{path}: its weight files do not match its mta_config.json: {e}") from e
    tokenizer = load_tokenizer(path)
    return Checkpoint(model, tasks, tokenizer, recorded, train_cfg, mta_cfg, meta["state"], path)


def _prefer_path(info: BaseModelInfo) -> str:
    """The recorded local path when it still exists (fast), else the original reference."""
    return info.path if Path(info.path).is_dir() else info.reference


def checkpoint_hash(path: Path) -> str:
    """sha256 of the adapter weights + configs: identifies a trained checkpoint in bundles."""
    import hashlib

    h = hashlib.sha256()
    for name in ("adapters.safetensors", "mta_config.json", "tasks.json", "base_model.json", BASE_FILE):
        if name == BASE_FILE and not (Path(path) / name).is_file():
            continue  # (a frozen base: the hash is what it always was)
        h.update(name.encode())
        with open(Path(path) / name, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "read_checkpoint_meta",
           "checkpoint_hash", "weights_hash"]
