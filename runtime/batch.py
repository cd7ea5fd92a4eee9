"""Batch inference over a JSONL file, resumable, with one output record per input row.

Rows (``runtime.rows``: the row schema, bad rows as error records) are grouped by task and
sorted by length; classify rows run in batches, a task's generate rows in ``batch_size`` slots
with continuous refill (a finished row's slot goes to the next row). The output keeps the input
order and is written atomically at the end; progress survives a crash in ``OUTPUT.partial``
(``runtime.batch_files``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alter_edge.errors import OutputError
from alter_edge.io import atomic_write_bytes, sha256_file

from .batch_files import (
    PARTIAL_VERSION,
    PartialFile,
    check_paths,
    header_difference,
    jsonl,
    output_target,
    record_line,
    record_problem,
)
from .generate import SamplingParams
from .model import EdgeModel, finished_rows
from .rows import (
    BatchOptions,
    ParsedRow,
    Row,
    RowError,
    budget,
    parse_row,
    read_rows,
    row_from_line,
    scores_labels,
)

__all__ = ["PARTIAL_VERSION", "BatchOptions", "BatchSummary", "ParsedRow", "PartialFile", "Row", "RowError",
           "check_paths", "header_difference", "iter_records", "jsonl", "output_target", "parse_row",
           "plan_batches", "read_rows", "record_line", "record_problem", "row_from_line", "run_batch_rows",
           "run_jsonl"]

log = logging.getLogger(__name__)

@dataclass
class BatchSummary:
    rows: int = 0
    ok: int = 0
    failed: int = 0
    resumed: int = 0  # rows taken from an earlier run's partial file
    seconds: float = 0.0
    output: str = ""
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_batches(rows: list[Row], batch_size: int) -> list[list[Row]]:
    """Group by task, then by prompt length, so a batch pads little and can use the task's
    specialized graph."""
    batches = []
    tasks = sorted({r.task for r in rows})
    for t in tasks:
        group = sorted((r for r in rows if r.task == t), key=lambda r: (len(r.prompt), r.line))
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


def run_batch_rows(model: EdgeModel, batch: list[Row], opts: BatchOptions) -> list[dict]:
    """The records of one planned batch (rows of one task), in its order."""
    spec = model.tasks.get(batch[0].task)
    if scores_labels(spec, opts):
        return _classify_records(model, batch)
    recs = {r["line"]: r for chunk in _generate_records(model, batch, opts) for r in chunk}
    return [recs[r.line] for r in batch]


def iter_records(model: EdgeModel, rows: list[Row], opts: BatchOptions) -> Iterator[list[dict]]:
    """The records of ``rows``, in chunks of at most ``batch_size`` (one chunk: one unit of saved
    progress), as many chunks as :func:`plan_batches` plans batches. Classify rows run batch
    by batch; a task's generate rows decode together in ``batch_size`` slots with continuous
    refill (a finished row's slot goes to the next row), each chunk the next rows to finish."""
    for task, group in itertools.groupby(plan_batches(rows, opts.batch_size), key=lambda b: b[0].task):
        if scores_labels(model.tasks.get(task), opts):
            for batch in group:
                yield run_batch_rows(model, batch, opts)
        else:
            yield from _generate_records(model, [r for batch in group for r in batch], opts)


def _classify_records(model: EdgeModel, batch: list[Row]) -> list[dict]:
    task = batch[0].task
    out = model.classify_ids([r.prompt for r in batch], task)
    return [_record(r, {"output": c.label, "probability": round(c.probability, 6),
                        "scores": {k: round(v, 6) for k, v in c.scores.items()}})
            for r, c in zip(batch, out, strict=True)]


def _generate_records(model: EdgeModel, rows: list[Row], opts: BatchOptions) -> Iterator[list[dict]]:
    """Records of generate rows of one task, ``batch_size`` at a time, in the order they finish."""
    task = rows[0].task
    spec = model.tasks.get(task)
    events = model.stream_ids([r.prompt for r in rows], [spec] * len(rows), SamplingParams(budget(model, opts)),
                              batch_size=opts.batch_size)
    chunk = []
    for i, g in finished_rows(events, len(rows), [task] * len(rows)):
        chunk.append(_record(rows[i], {"output": g.text.strip(), "finish_reason": g.finish_reason}))
        if len(chunk) == opts.batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _record(row: Row, result: dict) -> dict:
    rec = {"id": row.id, "line": row.line, "task": row.task, **result}
    if row.truncated:
        rec["truncated"] = True
    return rec


def run_jsonl(model: EdgeModel, input_path: str | Path, output_path: str | Path,
              opts: BatchOptions | None = None, resume: bool = False, progress: bool = True,
              on_batch: Callable[[int], None] | None = None) -> BatchSummary:
    """Run every row of ``input_path``; write ``output_path`` (JSONL, input order). With
    ``resume``, rows an earlier run saved in ``OUTPUT.partial`` are kept (or a fresh start when
    there is none). ``on_batch`` is called with the batch index after each batch (up to
    ``batch_size`` finished rows, :func:`iter_records`) is saved (tests use it to interrupt)."""
    from tqdm.auto import tqdm

    opts = BatchOptions() if opts is None else opts
    t0 = time.perf_counter()
    check_paths(input_path, output_path)
    input_path, output_path = Path(input_path), output_target(output_path)
    if opts.task is not None:
        model.tasks.get(opts.task)  # an unknown default task fails the job, not every row
    rows, errors = read_rows(model, input_path, opts)
    # each task's prefix cache holds exactly what all of this input's prompts share: a row's result
    # is then the same whether the job runs whole or resumed, and whatever the model ran before
    model.pin_prefixes([r.prompt for r in rows], [r.task for r in rows])
    partial = PartialFile(output_path.with_name(output_path.name + ".partial"),
                          _header(model, input_path, opts, rows))
    try:
        done = partial.load({r.line: r for r in rows}) if resume else (partial.start() or {})
    except OSError as e:
        raise OutputError(f"cannot write {partial.path}: {e.strerror or e}") from e
    summary = BatchSummary(rows=len(rows) + len(errors), output=str(output_path))
    todo = [r for r in rows if r.line not in done]
    summary.resumed = len(rows) - len(todo)
    bar = tqdm(total=len(rows), initial=summary.resumed, unit="row", desc="run", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    for b, records in enumerate(iter_records(model, todo, opts)):
        try:
            partial.append(records)
        except OSError as e:
            raise OutputError(f"cannot save progress in {partial.path}: {e.strerror or e}; the rows "
                              "saved before are kept there for a resumed run") from e
        done.update((r["line"], r) for r in records)
        bar.update(len(records))
        if on_batch is not None:
            on_batch(b)
    bar.close()
    out = [done.get(line) or errors[line] for line in sorted({*done, *errors})]
    if len(out) != summary.rows:  # PartialFile.load keeps only records of this input's good rows
        raise RuntimeError(f"{len(out)} records for {summary.rows} rows")
    try:
        atomic_write_bytes(output_path, jsonl(out))
    except OSError as e:
        raise OutputError(f"cannot write {output_path}: {e.strerror or e}; every row is saved in "
                          f"{partial.path} for a resumed run") from e
    partial.path.unlink(missing_ok=True)
    summary.failed = len(errors)
    summary.ok = summary.rows - summary.failed
    summary.errors = [e["error"] for e in errors.values()]
    summary.seconds = round(time.perf_counter() - t0, 3)
    log.info("batch: %d rows, %d failed, %.1fs", summary.rows, summary.failed, summary.seconds)
    return summary


def _header(model: EdgeModel, input_path: Path, opts: BatchOptions, rows: list[Row]) -> dict:
    """What decides the results, as effective values: a setting equal to its default, or one
    that no row uses, is not a difference (a default task no row falls back on, truncate when no
    row is over-long, max_new_tokens equal to the bundle's)."""
    tasks = {model.tasks.get(r.task) for r in rows}
    generates = any(t.kind != "classify" or not t.labels or opts.generate_labels for t in tasks)
    options = {
        "task": opts.task if any(r.default_task for r in rows) else None,
        "batch_size": opts.batch_size,
        "max_new_tokens": budget(model, opts) if generates else None,
        "truncate": opts.truncate and any(r.truncated for r in rows),
        "generate_labels": opts.generate_labels and any(t.kind == "classify" for t in tasks),
    }
    if not model.prefix_cache:  # scores may differ in the last digit without it (docs/runtime.md)
        options["prefix_cache"] = False
    return {"input_sha256": sha256_file(input_path), "options": options,
            "bundle": model.bundle.manifest_sha256, "precision": model.default_precision}


