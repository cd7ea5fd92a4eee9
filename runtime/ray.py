"""Batch inference on Ray Data: the local batch job (``runtime/batch.py``) run by a pool of actors.

    import ray
    from alter_edge.runtime.ray import RayOptions, predict, run_file
    ray.init()                                  # or ray.init(address="auto") on a cluster
    run_file("bundle", "rows.jsonl", "out.jsonl", ropts=RayOptions(actors=4, threads_per_actor=2))
    records = predict(ray.data.read_parquet("rows/"), "bundle")   # a Dataset {line, record}

The driver parses every row and plans the batches with the local job's own functions
(``row_from_line``, ``plan_batches``: by task, then by prompt length), so error records, batch
contents and therefore every output byte are the local job's. The planned batches (token ids,
not text) then go through ``map_batches`` on an actor pool; each actor holds one
:class:`EdgeModel` with ``threads_per_actor`` onnxruntime threads and runs whole planned
batches. The driver collects the records, checks that every row came back exactly once (a
failed actor's block is retried by Ray on a restarted actor) and returns them in input order.

The bundle reaches the workers once: either as a path every node can read (shared storage,
``bundle_transport="path"``) or packed into the object store by the driver
(``"object_store"``) and unpacked once per node, keyed by its manifest's sha256, into a private
folder of this user (a folder someone else placed there is never used). Each actor opens it
with ``verify=True``, so its graphs' sha256s are checked on that worker. A planned row travels
with every field of the local job's row (``truncated`` included), so the records are its bytes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

try:
    import ray
    import ray.data
except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError("alter_edge.runtime.ray needs Ray Data: pip install 'alter-edge[ray]'",
                              name=e.name) from e

from alter_edge.errors import BundleError, DataError
from alter_edge.io import atomic_write_text, sha256_file

from .batch import (
    BatchOptions,
    BatchSummary,
    Row,
    output_target,
    plan_batches,
    read_rows,
    record_line,
    run_batch_rows,
)
from .bundle import load_bundle
from .model import EdgeModel
from .rows import parse_rows

log = logging.getLogger(__name__)

TRANSPORTS = ("path", "object_store")


@dataclass(frozen=True)
class RayOptions:
    actors: int = 2  # EdgeModel actors in the pool (each holds one model in memory)
    threads_per_actor: int = 1  # onnxruntime intra-op threads; also the CPUs Ray reserves per actor
    precision: str | None = None  # graph precision (default: the bundle's best)
    bundle_transport: str = "path"  # path: every node reads the bundle path; object_store: shipped once
    blocks_per_actor: int = 8  # planned batches are cut into actors x this many blocks: the unit of retry
    max_restarts: int = 3  # times Ray restarts a dead actor
    max_task_retries: int = 3  # times a block is retried after its actor died

    def __post_init__(self) -> None:
        for name in ("actors", "threads_per_actor", "blocks_per_actor"):
            if getattr(self, name) < 1:
                raise DataError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.bundle_transport not in TRANSPORTS:
            raise DataError(f"bundle transport {self.bundle_transport!r}: allowed are {', '.join(TRANSPORTS)}")


# -- the bundle on the workers -----------------------------------------------------------------
def _pack_bundle(bundle_dir: Path) -> tuple[str, bytes]:
    """(the manifest's sha256, the bundle folder as an uncompressed tar). The manifest lists the
    sha256 of every file, so its hash names this exact bundle (two exports of one checkpoint
    differ)."""
    b = load_bundle(bundle_dir, verify=False)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(b.root), arcname="bundle")
    return b.manifest_sha256, buf.getvalue()


def private_cache_dir(parent: Path, name: str) -> Path | None:
    """``parent/name``, made 0700 when missing; None when what is there is not a private folder
    of this user (a symlink, another owner, group or world access): never trust a folder that
    someone else could have placed in a shared temp directory."""
    d = Path(parent) / name
    try:
        d.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("%s is not a private folder of this user: unpacking the bundle elsewhere", d)
        return None
    return d


def _unpack_bundle(key: str, fetch: Callable[[], bytes]) -> Path:
    """The shipped bundle (``fetch()``: its tar) unpacked under this node's private cache folder,
    once per node per manifest hash ``key`` (atomically); a copy whose manifest does not hash to
    ``key`` is never used. Each actor then loads it with ``verify=True``."""
    tmpdir = Path(tempfile.gettempdir())
    cache = private_cache_dir(tmpdir, f"alter-edge-ray-{os.getuid()}")
    if cache is None:
        cache = Path(tempfile.mkdtemp(prefix="alter-edge-ray-", dir=tmpdir))  # this actor's own
    final = cache / key
    if _manifest_is(final / "bundle", key):
        return final / "bundle"
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", dir=cache))
    try:
        with tarfile.open(fileobj=io.BytesIO(fetch()), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        if not _manifest_is(tmp / "bundle", key):
            raise BundleError(f"the bundle shipped through the object store does not match manifest sha256 {key}")
        os.replace(tmp, final)  # another actor on this node may have won: then use its copy
    except OSError:
        if not _manifest_is(final / "bundle", key):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "bundle"


def _manifest_is(bundle: Path, key: str) -> bool:
    manifest = bundle / "manifest.json"
    return manifest.is_file() and not manifest.is_symlink() and sha256_file(manifest) == key


def _ship_row(row: Row) -> list:
    """A planned row as JSON for the actors: every field of :class:`Row`, in order."""
    return [getattr(row, f.name) for f in fields(Row)]


def _unship_row(item: list) -> Row:
    return Row(*item)


class _Predictor:
    """One actor: one EdgeModel; each call runs whole planned batches (JSON rows in, JSONL
    record lines out)."""

    def __init__(self, bundle: str | None, shipped: tuple[str, list] | None, threads: int,
                 precision: str | None, opts: dict):
        path = Path(bundle) if shipped is None else _unpack_bundle(shipped[0], lambda: ray.get(shipped[1][0]))
        self.model = EdgeModel.load(path, threads=threads, precision=precision, verify=True)
        self.opts = BatchOptions(**opts)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        lines, texts = [], []
        for planned in batch["rows"]:
            rows = [_unship_row(r) for r in json.loads(planned)]
            for rec in run_batch_rows(self.model, rows, self.opts):
                lines.append(rec["line"])
                texts.append(record_line(rec))
        return {"line": np.array(lines, dtype=np.int64), "text": np.array(texts, dtype=object)}


# -- driving -----------------------------------------------------------------------------------
@contextmanager
def _ordered(progress: bool):
    """Ray Data yields blocks in dataset order (and shows progress bars only when asked)."""
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, progress
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def _map(ds: ray.data.Dataset, shipped, bundle: Path, opts: BatchOptions, ropts: RayOptions) -> ray.data.Dataset:
    return ds.map_batches(
        _Predictor,
        fn_constructor_kwargs={"bundle": str(bundle), "shipped": shipped, "threads": ropts.threads_per_actor,
                               "precision": ropts.precision, "opts": asdict(opts)},
        batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=ropts.actors),
        num_cpus=ropts.threads_per_actor,
        ray_remote_args_fn=lambda: {"max_restarts": ropts.max_restarts,
                                    "max_task_retries": ropts.max_task_retries},
    )


def _run_planned(bundle: Path, rows: list[Row], opts: BatchOptions, ropts: RayOptions,
                 progress: bool) -> dict[int, str]:
    """Run the good rows on the actor pool: {line: its record's JSONL line}, each row once."""
    batches = plan_batches(rows, opts.batch_size)
    if not batches:
        return {}
    items = [{"rows": json.dumps([_ship_row(r) for r in b], ensure_ascii=False)} for b in batches]
    shipped = None
    if ropts.bundle_transport == "object_store":
        key, blob = _pack_bundle(bundle)
        shipped = (key, [ray.put(blob)])  # boxed: Ray passes the reference, the actor fetches it once
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), ropts.actors * ropts.blocks_per_actor))
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for actor restarts and task retries yet; without these
        # args its defaults retry forever. ray_remote_args_fn is due to go in Ray 2.64 (pinned: 2.60).
        warnings.filterwarnings("ignore", message=".*ray_remote_args_fn. is deprecated")
        out = _map(ds, shipped, bundle, opts, ropts)
    done: dict[int, str] = {}
    dup: list[int] = []
    with _ordered(progress):
        for b in out.iter_batches(batch_format="numpy", batch_size=None):
            for line, text in zip(b["line"].tolist(), b["text"].tolist(), strict=True):
                if line in done:
                    dup.append(line)
                done[line] = text
    missing = sorted({r.line for r in rows} - done.keys())
    if dup or missing:
        raise RuntimeError(f"Ray batch job: {len(missing)} rows lost (lines {missing[:5]}), "
                           f"{len(dup)} duplicated (lines {dup[:5]})")
    return done


def _driver_model(bundle: str | Path) -> EdgeModel:
    """Tokenizer and task registry for parsing; opens no graph."""
    return EdgeModel.load(bundle, tasks=[])


def _dataset_lines(dataset: ray.data.Dataset, progress: bool) -> Iterator[tuple[int, bytes | dict]]:
    """``(line, a JSONL line or the row's fields)`` of each row of ``dataset``, in order."""
    n = 0
    with _ordered(progress):
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=4096):
            for obj in table.to_pylist():
                n += 1
                line = obj.pop("line", None)
                raw = obj.pop("raw", None)
                if isinstance(raw, str):
                    raw = raw.encode("utf-8")
                yield (n if line is None else int(line)), (raw if raw is not None else obj)


def parse_dataset(model: EdgeModel, dataset: ray.data.Dataset, opts: BatchOptions,
                  progress: bool = False) -> tuple[list[Row], dict[int, dict]]:
    """Rows of a Dataset, parsed as the local job parses lines. A row is either ``raw`` (one
    JSONL line, bytes or str) or the fields ``input`` (+ ``id``, ``task``); ``line`` is its row
    index, else rows are numbered 1, 2, ... in dataset order."""
    rows, errors = parse_rows(model, _dataset_lines(dataset, progress), opts)
    if len({r.line for r in rows} | errors.keys()) != len(rows) + len(errors):
        raise DataError("the dataset's 'line' column repeats a row index")
    return rows, errors


def _merge(rows: list[Row], errors: dict[int, dict], done: dict[int, str]) -> list[tuple[int, str]]:
    recs = {**{line: record_line(e) for line, e in errors.items()}, **done}
    return sorted(recs.items())


def predict(dataset: ray.data.Dataset, bundle: str | Path, opts: BatchOptions | None = None,
            ropts: RayOptions | None = None, progress: bool = False) -> ray.data.Dataset:
    """Run every row of ``dataset`` (see :func:`parse_dataset` for its columns) through an actor
    pool. Returns a Dataset ``{line, record}`` in input order, ``record`` being the JSON text of
    the local job's record for that row (error records included)."""
    opts, ropts = opts or BatchOptions(), ropts or RayOptions()
    model = _driver_model(bundle)
    rows, errors = parse_dataset(model, dataset, opts, progress)
    done = _run_planned(model.bundle.root, rows, opts, ropts, progress)
    out = [{"line": line, "record": text.rstrip("\n")} for line, text in _merge(rows, errors, done)]
    return ray.data.from_items(out) if out else ray.data.from_items([], override_num_blocks=1)


def _parquet(path: Path) -> bool:
    return path.is_dir() or path.suffix == ".parquet"


def run_file(bundle: str | Path, input_path: str | Path, output_path: str | Path,
             opts: BatchOptions | None = None, ropts: RayOptions | None = None,
             progress: bool = True) -> BatchSummary:
    """The local job's ``run_jsonl`` on Ray: JSONL (or Parquet: a ``.parquet`` file or folder,
    read by Ray Data) in, JSONL out, byte-identical to the local job's output (written
    atomically). Needs ``ray.init()`` first (a local cluster or ``address=...``)."""
    t0 = time.perf_counter()
    opts, ropts = opts or BatchOptions(), ropts or RayOptions()
    input_path, output_path = Path(input_path), output_target(output_path)
    if not input_path.exists():
        raise DataError(f"input file not found: {input_path}")
    model = _driver_model(bundle)
    if _parquet(input_path):
        rows, errors = parse_dataset(model, ray.data.read_parquet(str(input_path)), opts, progress)
    else:
        rows, errors = read_rows(model, input_path, opts)  # the local job's own reader
    done = _run_planned(model.bundle.root, rows, opts, ropts, progress)
    atomic_write_text(output_path, "".join(text for _, text in _merge(rows, errors, done)))
    summary = BatchSummary(rows=len(rows) + len(errors), ok=len(rows), failed=len(errors),
                           output=str(output_path), errors=[e["error"] for e in errors.values()])
    summary.seconds = round(time.perf_counter() - t0, 3)
    log.info("ray batch: %d rows, %d failed, %d actors, %.1fs", summary.rows, summary.failed,
             ropts.actors, summary.seconds)
    return summary


def init(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (``address``: ``auto``, ``ray://host:10001``, ``host:6379``) or start
    a local one (None); a no-op when Ray is already initialized."""
    if ray.is_initialized():
        return
    kwargs: dict = {"address": address, "log_to_driver": False}
    if address is None:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    ray.init(**kwargs)


def record_dicts(records: Iterable[dict]) -> list[dict]:
    """Parsed records of :func:`predict`'s Dataset rows (``record`` is JSON text)."""
    return [json.loads(r["record"]) for r in records]


__all__ = ["RayOptions", "init", "parse_dataset", "predict", "record_dicts", "run_file"]
