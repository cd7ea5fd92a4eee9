"""Batch inference over a JSONL file, resumable, with one output record per input row.

Input rows are ``{"id": ..., "task": ..., "input": ...}`` (``task`` optional when a default
task is given). A bad row (not JSON, no input, unknown task, an input over the bundle's
``max_prompt_tokens``) becomes an error record ``{"id", "line", "error"}`` and the run goes
on. Rows are grouped by task and sorted by length into batches; the output keeps the input
order and is written atomically at the end.

Progress survives a crash in ``OUTPUT.partial``: a header line (input hash, options, bundle)
then one finished record per line, appended and fsync'ed after every batch. A torn last line
(a kill mid-write) is dropped on resume, so ``--resume`` redoes at most one batch and the
final file equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alter_edge.data import parse_line
from alter_edge.errors import DataError, TaskError
from alter_edge.io import atomic_write_text, sha256_file

from .generate import SamplingParams
from .model import EdgeModel, collect

log = logging.getLogger(__name__)

PARTIAL_VERSION = 1


@dataclass(frozen=True)
class BatchOptions:
    task: str | None = None  # default task for rows without one
    batch_size: int = 8
    max_new_tokens: int | None = None  # None: the bundle's default
    truncate: bool = False  # cut an over-long prompt in the middle, as training did (else: error row)
    generate_labels: bool = False  # classify tasks: generate freely instead of scoring the labels

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {self.batch_size}")


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


@dataclass(frozen=True)
class _Row:
    line: int
    id: object
    task: str
    prompt: list[int]


def parse_row(model: EdgeModel, raw: bytes | dict, lineno: int, opts: BatchOptions) -> _Row | dict:
    """One input row -> its :class:`_Row`, or its error record ``{"id", "line", "error"}``.
    ``raw`` is a JSONL line (bytes, no newline) or an already decoded row (a Parquet row: a
    null column counts as absent)."""
    row_id = None
    try:
        if isinstance(raw, dict):
            raw = json.dumps({k: v for k, v in raw.items() if v is not None}, ensure_ascii=False).encode()
        obj = parse_line(raw, lineno, fields=("input",))
        row_id = obj.get("id")
        task = obj.get("task", opts.task)
        if task is None:
            raise DataError(f"line {lineno}: no task (give the row a 'task' or pass a default `task`)")
        if not isinstance(task, str) or task not in model.tasks:
            raise DataError(f"line {lineno}: unknown task {task!r}; known tasks: "
                            f"{', '.join(model.tasks.names)}")
        prompt, full = model.encode(obj["input"], task)
        limit = model.bundle.max_prompt_tokens
        if full > limit and not opts.truncate:
            raise DataError(f"line {lineno}: input is {full} tokens with its prompt, over the "
                            f"bundle's max_prompt_tokens {limit} (`truncate` cuts it in the middle to {limit} tokens, as training did)")
        return _Row(lineno, row_id, task, prompt)
    except (DataError, TaskError) as e:
        return {"id": row_id if row_id is not None else _best_effort_id(raw),
                "line": lineno, "error": str(e)}


def read_rows(model: EdgeModel, path: Path, opts: BatchOptions) -> tuple[list[_Row], dict[int, dict]]:
    """(good rows, error records by line). Blank lines are skipped."""
    rows: list[_Row] = []
    errors: dict[int, dict] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            r = parse_row(model, raw.rstrip(b"\r\n"), lineno, opts)
            if isinstance(r, dict):
                errors[lineno] = r
            else:
                rows.append(r)
    return rows, errors


def record_line(record: dict) -> str:
    """One output record as its JSONL line (the local and the Ray job write the same bytes)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def _best_effort_id(raw: bytes) -> object:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj.get("id") if isinstance(obj, dict) else None


def plan_batches(rows: list[_Row], batch_size: int) -> list[list[_Row]]:
    """Group by task, then by prompt length, so a batch pads little and can use the task's
    specialized graph."""
    batches = []
    tasks = sorted({r.task for r in rows})
    for t in tasks:
        group = sorted((r for r in rows if r.task == t), key=lambda r: (len(r.prompt), r.line))
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


def run_batch_rows(model: EdgeModel, batch: list[_Row], opts: BatchOptions) -> list[dict]:
    task = batch[0].task
    spec = model.tasks.get(task)
    prompts = [r.prompt for r in batch]
    if spec.kind == "classify" and spec.labels and not opts.generate_labels:
        return [{"id": r.id, "line": r.line, "task": task, "output": c.label,
                 "probability": round(c.probability, 6),
                 "scores": {k: round(v, 6) for k, v in c.scores.items()}}
                for r, c in zip(batch, model.classify_ids(prompts, task), strict=True)]
    params = SamplingParams(opts.max_new_tokens or model.bundle.max_new_tokens)
    gens = collect(model.stream_ids(prompts, [spec] * len(batch), params), len(batch), [task] * len(batch))
    return [{"id": r.id, "line": r.line, "task": task, "output": g.text.strip(),
             "finish_reason": g.finish_reason} for r, g in zip(batch, gens, strict=True)]


class PartialFile:
    """Append-only progress file: header line, then finished records; fsync after each append."""

    def __init__(self, path: Path, header: dict):
        self.path = Path(path)
        self.header = {"alter_edge_partial": PARTIAL_VERSION, **header}

    def load(self) -> dict[int, dict]:
        """Records of an earlier run with the same header (else an error); rewrites the file
        (atomically) without a torn last line."""
        if not self.path.is_file():
            return {}
        lines = self.path.read_bytes().split(b"\n")
        try:
            head = json.loads(lines[0])
        except (json.JSONDecodeError, UnicodeDecodeError):
            head = None
        if head != self.header:
            raise DataError(
                f"{self.path} belongs to a different run (input file, options or bundle changed); "
                "delete it or run without `resume`"
            )
        done: dict[int, dict] = {}
        for raw in lines[1:]:
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a torn line from a kill mid-write
            if isinstance(rec, dict) and isinstance(rec.get("line"), int):
                done[rec["line"]] = rec
        self._write(done.values())
        return done

    def start(self) -> None:
        self._write([])

    def _write(self, records) -> None:
        text = json.dumps(self.header, sort_keys=True) + "\n"
        text += "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write_text(self.path, text)

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())


def run_jsonl(model: EdgeModel, input_path: str | Path, output_path: str | Path,
              opts: BatchOptions = BatchOptions(), resume: bool = False, progress: bool = True,
              on_batch: Callable[[int], None] | None = None) -> BatchSummary:
    """Run every row of ``input_path``; write ``output_path`` (JSONL, input order). ``on_batch``
    is called with the batch index after each batch is saved (tests use it to interrupt)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise DataError(f"input file not found: {input_path}")
    rows, errors = read_rows(model, input_path, opts)
    header = {"input_sha256": sha256_file(input_path), "options": asdict(opts),
              "bundle": model.bundle.manifest.get("checkpoint_sha256"),
              "precision": model.precision}
    partial = PartialFile(output_path.with_name(output_path.name + ".partial"), header)
    done = partial.load() if resume else {}
    if not resume:
        partial.start()
    summary = BatchSummary(rows=len(rows) + len(errors), output=str(output_path))
    todo = [r for r in rows if r.line not in done]
    summary.resumed = len(rows) - len(todo)
    bar = tqdm(total=len(rows), initial=summary.resumed, unit="row", desc="run", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    for b, batch in enumerate(plan_batches(todo, opts.batch_size)):
        records = run_batch_rows(model, batch, opts)
        partial.append(records)
        done.update((r["line"], r) for r in records)
        bar.update(len(batch))
        if on_batch is not None:
            on_batch(b)
    bar.close()
    out = [done.get(line) or errors[line] for line in sorted({*done, *errors})]
    atomic_write_text(output_path, "".join(record_line(r) for r in out))
    partial.path.unlink(missing_ok=True)
    summary.failed = len(errors)
    summary.ok = summary.rows - summary.failed
    summary.errors = [e["error"] for e in errors.values()]
    summary.seconds = round(time.perf_counter() - t0, 3)
    log.info("batch: %d rows, %d failed, %.1fs", summary.rows, summary.failed, summary.seconds)
    return summary
