"""Batch inference over a JSONL file, resumable, with one output record per input row.

Input rows are ``{"id": ..., "task": ..., "input": ...}`` (``task`` optional when a default
task is given). A bad row (not UTF-8, not JSON, NaN or a number too big to read, nesting too
deep, an ``id`` that is not a string/finite number/null or not valid Unicode, no or empty
input, unknown task, an input over the bundle's ``max_prompt_tokens``) becomes an error record
``{"id", "line", "error"}`` and the run goes on: no line, however bad, stops the job. Rows are
grouped by task and sorted by length; classify rows run in batches, a task's generate rows in
``batch_size`` slots with continuous refill (a finished row's slot goes to the next row). The
output keeps the input order and is written atomically at the end.

Progress survives a crash in ``OUTPUT.partial``: a header line (input hash, effective
settings, bundle) then one finished record per line, appended and fsync'ed after every batch
(``batch_size`` finished rows). A torn last line (a kill mid-write) is dropped on resume, so a
resumed run redoes only the unsaved rows and the final file equals an uninterrupted run's. The
file is not trusted: a resume keeps its records only when each is for a line holding a good row
of this input, once, with that row's id and task (records come in the order rows finished, not
in line order); any other line refuses the resume, naming it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import stat
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from alter_edge.errors import ConfigError, DataError, OutputError, TaskError
from alter_edge.io import atomic_write_bytes, json_line_problem, sha256_file, shown
from alter_edge.tasks import TaskSpec

from .generate import SamplingParams, shown_value
from .model import EdgeModel, finished_rows, input_problem

log = logging.getLogger(__name__)

PARTIAL_VERSION = 3  # 2: effective settings in the header; 3: the bundle is its manifest's sha256


@dataclass(frozen=True)
class BatchOptions:
    task: str | None = None  # default task for rows without one
    batch_size: int = 8
    max_new_tokens: int | None = None  # None: the bundle's default
    truncate: bool = False  # cut an over-long prompt in the middle, as training did (else: error row)
    generate_labels: bool = False  # classify tasks: generate freely instead of scoring the labels

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch size must be an integer >= 1, got {shown_value(self.batch_size)}")
        if self.max_new_tokens is not None and (isinstance(self.max_new_tokens, bool) or not isinstance(
                self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise ConfigError(f"max_new_tokens must be an integer >= 1 or None, got {shown_value(self.max_new_tokens)}")


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
    truncated: bool = False
    default_task: bool = False  # the row has no task of its own


class ParsedRow(NamedTuple):
    id: object
    task: str
    input: str
    default_task: bool  # the task came from the job's default


class RowError(DataError):
    """A bad row; ``row_id`` is its id when that much of it was readable (else None)."""

    def __init__(self, message: str, row_id: object = None):
        super().__init__(message)
        self.row_id = row_id


def parse_row(raw: bytes, lineno: int, default_task: str | None,
              known_tasks: Collection[str]) -> ParsedRow:
    """One JSONL line of the batch job -> a :class:`ParsedRow`, or a :class:`RowError` naming the
    line. The id is a string, a finite number or null, valid Unicode (it is written back); the
    input a non-empty string; the task one of ``known_tasks``. A field that is null counts as
    absent (``"task": null`` takes the default task), as a null column of a Parquet row does. Anything else (not UTF-8, not
    JSON, NaN, a 5,000-digit number, nesting deeper than the parser goes) is a RowError, never
    another exception."""
    obj, problem = json_line_problem(raw)
    if problem:
        raise RowError(f"line {lineno}: {problem}")
    if not isinstance(obj, dict):
        raise RowError(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
    obj = {k: v for k, v in obj.items() if v is not None}  # null is absent, as in a Parquet row
    row_id = obj.get("id")
    problem = _id_problem(row_id)
    if problem:
        raise RowError(f"line {lineno}: field 'id' {problem}")
    if "input" not in obj:
        raise RowError(f"line {lineno}: missing field(s) input; each row needs input", row_id)
    text_in = obj["input"]
    if not isinstance(text_in, str):
        raise RowError(f"line {lineno}: field 'input' must be a string, got {type(text_in).__name__}", row_id)
    problem = input_problem(text_in)
    if problem:
        raise RowError(f"line {lineno}: field 'input' {problem}", row_id)
    task = obj.get("task", default_task)
    if task is None:
        raise RowError(f"line {lineno}: no task (give the row a 'task', or give the job a default task)", row_id)
    if not isinstance(task, str) or task not in known_tasks:
        raise RowError(f"line {lineno}: unknown task {shown(task)}; known tasks: "
                       f"{', '.join(sorted(known_tasks))}", row_id)
    return ParsedRow(row_id, task, text_in, "task" not in obj)


def _id_problem(row_id: object) -> str | None:
    if row_id is None or isinstance(row_id, (bool, int)):
        return None
    if isinstance(row_id, float):
        return None if math.isfinite(row_id) else f"must be a finite number, got {row_id!r}"
    if isinstance(row_id, str):
        try:
            row_id.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"is not valid Unicode (a lone surrogate {row_id[e.start]!r} at character {e.start})"
        return None
    return f"must be a string, a number or null, got {type(row_id).__name__}"


def row_from_line(model: EdgeModel, raw: bytes | dict, lineno: int, opts: BatchOptions,
                  known: set[str] | None = None) -> _Row | dict:
    """One input row -> its :class:`_Row`, or its error record ``{"id", "line", "error"}``; no
    row, however bad, raises. ``raw`` is a JSONL line (bytes, no newline) or an already decoded
    row (a Parquet row: a null column counts as absent). The local and the Ray job both use it."""
    row_id = None
    try:
        if isinstance(raw, dict):
            raw = json.dumps(raw, ensure_ascii=False).encode()
        parsed = parse_row(raw, lineno, opts.task, known if known is not None else set(model.tasks.names))
        row_id = parsed.id
        try:
            prompt, cut = model.prompt_ids(parsed.input, parsed.task, opts.truncate)
            _check_positions(model, prompt, parsed.task, opts)
        except (DataError, TaskError) as e:
            raise RowError(f"line {lineno}: {e}", row_id) from e
        return _Row(lineno, row_id, parsed.task, prompt, cut, parsed.default_task)
    except RowError as e:
        return {"id": e.row_id, "line": lineno, "error": str(e)}
    except Exception as e:  # a row must never cost the others: record it, go on
        log.exception("line %d could not be read", lineno)
        return {"id": row_id, "line": lineno,
                "error": f"line {lineno}: cannot be read ({type(e).__name__}: {shown(str(e))})"}


def _check_positions(model: EdgeModel, prompt: list[int], task: str, opts: BatchOptions) -> None:
    """The row's prompt plus what runs after it (its new tokens, or its task's longest label)
    fits the positions the bundle's graphs cover; else a DataError for this row alone."""
    limit = model.bundle.kv.max_sequence_length
    if _scores_labels(model.tasks.get(task), opts):
        after, what = max(len(x) for x in model.label_ids(task)), "tokens of its longest label"
    else:
        after, what = _budget(model, opts), "new tokens"
    if len(prompt) + after > limit:
        raise DataError(f"its prompt of {len(prompt)} tokens plus {after} {what} exceed the {limit} positions "
                        "the bundle's graphs cover (ask for fewer `max_new_tokens`, or shorten the input)")


def read_rows(model: EdgeModel, path: Path, opts: BatchOptions) -> tuple[list[_Row], dict[int, dict]]:
    """(good rows, error records by line). Blank lines are skipped. No line, however bad,
    stops the reading: each becomes one error record."""
    rows: list[_Row] = []
    errors: dict[int, dict] = {}
    known = set(model.tasks.names)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            r = row_from_line(model, raw.rstrip(b"\r\n"), lineno, opts, known)
            if isinstance(r, dict):
                errors[lineno] = r
            else:
                rows.append(r)
    return rows, errors


def record_line(record: dict) -> str:
    """One output record as its JSONL line (the local and the Ray job write the same bytes)."""
    return jsonl([record]).decode("utf-8")


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
    """The records of one planned batch (rows of one task), in its order."""
    spec = model.tasks.get(batch[0].task)
    if _scores_labels(spec, opts):
        return _classify_records(model, batch)
    recs = {r["line"]: r for chunk in _generate_records(model, batch, opts) for r in chunk}
    return [recs[r.line] for r in batch]


def iter_records(model: EdgeModel, rows: list[_Row], opts: BatchOptions) -> Iterator[list[dict]]:
    """The records of ``rows``, in chunks of at most ``batch_size`` (one chunk: one unit of saved
    progress), as many chunks as :func:`plan_batches` plans batches. Classify rows run batch
    by batch; a task's generate rows decode together in ``batch_size`` slots with continuous
    refill (a finished row's slot goes to the next row), each chunk the next rows to finish."""
    for task, group in itertools.groupby(plan_batches(rows, opts.batch_size), key=lambda b: b[0].task):
        if _scores_labels(model.tasks.get(task), opts):
            for batch in group:
                yield run_batch_rows(model, batch, opts)
        else:
            yield from _generate_records(model, [r for batch in group for r in batch], opts)


def _scores_labels(spec: TaskSpec, opts: BatchOptions) -> bool:
    return spec.kind == "classify" and bool(spec.labels) and not opts.generate_labels


def _classify_records(model: EdgeModel, batch: list[_Row]) -> list[dict]:
    task = batch[0].task
    out = model.classify_ids([r.prompt for r in batch], task)
    return [_record(r, {"output": c.label, "probability": round(c.probability, 6),
                        "scores": {k: round(v, 6) for k, v in c.scores.items()}})
            for r, c in zip(batch, out, strict=True)]


def _generate_records(model: EdgeModel, rows: list[_Row], opts: BatchOptions) -> Iterator[list[dict]]:
    """Records of generate rows of one task, ``batch_size`` at a time, in the order they finish."""
    task = rows[0].task
    spec = model.tasks.get(task)
    events = model.stream_ids([r.prompt for r in rows], [spec] * len(rows), SamplingParams(_budget(model, opts)),
                              batch_size=opts.batch_size)
    chunk = []
    for i, g in finished_rows(events, len(rows), [task] * len(rows)):
        chunk.append(_record(rows[i], {"output": g.text.strip(), "finish_reason": g.finish_reason}))
        if len(chunk) == opts.batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _record(row: _Row, result: dict) -> dict:
    rec = {"id": row.id, "line": row.line, "task": row.task, **result}
    if row.truncated:
        rec["truncated"] = True
    return rec


def _budget(model: EdgeModel, opts: BatchOptions) -> int:
    return model.bundle.max_new_tokens if opts.max_new_tokens is None else opts.max_new_tokens


def jsonl(records) -> bytes:
    """JSONL bytes of ``records``. A record that cannot be written as strict JSON (NaN, a lone
    surrogate) becomes that line's error record instead of stopping the job."""
    out = []
    for r in records:
        try:
            out.append(json.dumps(r, ensure_ascii=False, allow_nan=False).encode("utf-8"))
        except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as e:
            line = r.get("line") if isinstance(r.get("line"), int) else None
            out.append(json.dumps({"id": None, "line": line, "error": f"line {line}: the result cannot "
                                   f"be written as JSON ({type(e).__name__})"}).encode())
    return b"".join(x + b"\n" for x in out)


class PartialFile:
    """Append-only progress file: header line, then finished records; fsync after each append."""

    def __init__(self, path: Path, header: dict):
        self.path = Path(path)
        self.header = {"alter_edge_partial": PARTIAL_VERSION, **header}

    def load(self, rows: Mapping[int, _Row] | None = None) -> dict[int, dict]:
        """Records of an earlier run with the same header (else a DataError naming what
        differs); rewrites the file (atomically) without a torn last line. No file (or one the
        kill left without a header): a fresh start. ``rows`` (the job's good rows by line):
        every record must be one of theirs (:func:`record_problem`), else a DataError naming
        the first bad line of the file; nothing is changed then."""
        if not self.path.is_file():
            self.start()
            return {}
        lines = self.path.read_bytes().split(b"\n")
        try:
            head = json.loads(lines[0])
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError):
            head = None
        if not isinstance(head, dict) or "alter_edge_partial" not in head:
            raise DataError(f"{self.path} is not a progress file of this job (no header line); delete it to start over")
        if head != self.header:
            raise DataError(f"{self.path} belongs to a different run ({header_difference(head, self.header)}); "
                            "delete it to start over, or run with the same settings")
        done: dict[int, dict] = {}
        body, torn = lines[1:-1], lines[-1]  # every record ends in a newline; a kill tears only the last
        if torn:
            log.info("%s: dropped a torn last line (%d bytes) left by an interrupted write", self.path, len(torn))
        for k, raw in enumerate(body, start=2):
            problem = record_problem(raw, rows, done)
            if problem:
                raise DataError(f"{self.path}: line {k} {problem}; the file was changed by something other "
                                "than this job: delete it to start over")
            rec = json.loads(raw)
            done[rec["line"]] = rec
        self._write(done.values())
        return done

    def start(self) -> None:
        self._write([])

    def _write(self, records) -> None:
        # ensure_ascii: the header is plain ASCII whatever a setting holds
        head = json.dumps(self.header, sort_keys=True).encode() + b"\n"
        atomic_write_bytes(self.path, head + jsonl(records))

    def append(self, records: list[dict]) -> None:
        with open(self.path, "ab") as f:
            f.write(jsonl(records))
            f.flush()
            os.fsync(f.fileno())


def record_problem(raw: bytes, rows: Mapping[int, _Row] | None, done: Mapping[int, dict]) -> str | None:
    """What is wrong with one saved line of a partial file, or None: it must be a JSON object
    whose ``line`` is an integer naming a good row of the input (``rows``; None: any line),
    not saved before (``done``), with that row's ``id`` and ``task`` and a string ``output``, or
    the error record :func:`jsonl` writes for a result it cannot write (id null, an ``error``)."""
    rec, problem = json_line_problem(raw)
    if problem:
        return "is not a record (not JSON)"
    if not isinstance(rec, dict):
        return f"is not a record (a JSON {type(rec).__name__}, not an object)"
    line = rec.get("line")
    if isinstance(line, bool) or not isinstance(line, int):
        return f"has no line number (line is {shown(line, 40)})"
    if line in done:
        return f"is a second record for line {line}"
    if rows is None:
        return None
    row = rows.get(line)
    if row is None:
        return f"is a record for line {shown(line, 40)}, which holds no good row of the input"
    if "error" in rec and "output" not in rec:  # jsonl's record for a result it could not write
        return None if rec.get("id") is None and isinstance(rec["error"], str) else (
            f"is an error record for line {line} that this job does not write")
    if rec.get("id") != row.id or type(rec.get("id")) is not type(row.id):
        return f"is a record for line {line} whose id {shown(rec.get('id'), 40)} is not the input's {shown(row.id, 40)}"
    if rec.get("task") != row.task:
        return (f"is a record for line {line} whose task {shown(rec.get('task'), 40)} is not the input's "
                f"{row.task!r}")
    if not isinstance(rec.get("output"), str):
        return f"is a record for line {line} without a string output"
    return None


def header_difference(old: dict, new: dict) -> str:
    """Which settings differ between two progress headers, in words."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    a, b = flat(old), flat(new)
    diffs = []
    for k in sorted({*a, *b}):
        if a.get(k) != b.get(k):
            name = k.removeprefix("options.")
            if k == "input_sha256":
                diffs.append("the input file changed")
            elif k == "bundle":
                diffs.append("another bundle (its manifest.json differs)")
            elif k == "alter_edge_partial":
                diffs.append(f"progress format {a.get(k)!r} there, {b.get(k)!r} now")
            else:
                diffs.append(f"{name} {shown(a.get(k), 40)} there, {shown(b.get(k), 40)} now")
    return "; ".join(diffs) or "the header differs"


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def output_target(output_path: str | Path) -> Path:
    """The file the job writes for ``output_path``: the path itself, or the regular file a
    symlink leads to (written through, the link stays). The output is written atomically, a new
    file renamed over the old, so anything that is not a regular file (a device such as
    /dev/null, a pipe such as /dev/stdout, a folder; also through a link) is refused, never
    replaced."""
    path = Path(output_path)
    try:
        st = os.stat(path)  # follows links, /proc's fd links too
    except FileNotFoundError:
        if path.is_symlink():
            raise OutputError(f"output {path} is a symlink to a missing file; give a file path") from None
        return path
    except OSError as e:
        raise OutputError(f"output {path} cannot be checked: {e.strerror or e}") from e
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise OutputError(f"output {path} is {kind}: the job writes a regular file, atomically (a new file "
                          "renamed into place, which would replace it); give a file path")
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if not (target.is_file() and os.path.samefile(target, path)):  # a /proc fd link names no path
        raise OutputError(f"output {path} is a link that cannot be written through; give a file path")
    return target


def check_paths(input_path: str | Path, output_path: str | Path) -> None:
    """Refuse, before any model is loaded: a missing input; an output that is not a regular file
    (:func:`output_target`); an output (or its ``.partial``) that is the input file, also through
    a symlink or hard link; an output location that cannot be written (read-only, full, not a
    folder). Creates the output's folder when missing."""
    input_path = Path(input_path)
    if not input_path.is_file():
        raise DataError(f"input file not found: {input_path}")
    output_path = output_target(output_path)
    partial = output_path.with_name(output_path.name + ".partial")
    for target in (output_path, partial):
        if target.exists() and os.path.samefile(target, input_path):
            raise OutputError(f"output {target} is the input file {input_path}: writing it would "
                              "overwrite the input; choose another output")
    folder = output_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{output_path.name}.", suffix=".probe", dir=folder)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write the output in {folder}: {e.strerror or e}") from e


def run_jsonl(model: EdgeModel, input_path: str | Path, output_path: str | Path,
              opts: BatchOptions = BatchOptions(), resume: bool = False, progress: bool = True,
              on_batch: Callable[[int], None] | None = None) -> BatchSummary:
    """Run every row of ``input_path``; write ``output_path`` (JSONL, input order). With
    ``resume``, rows an earlier run saved in ``OUTPUT.partial`` are kept (or a fresh start when
    there is none). ``on_batch`` is called with the batch index after each batch (up to
    ``batch_size`` finished rows, :func:`iter_records`) is saved (tests use it to interrupt)."""
    from tqdm.auto import tqdm

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


def _header(model: EdgeModel, input_path: Path, opts: BatchOptions, rows: list[_Row]) -> dict:
    """What decides the results, as effective values: a setting equal to its default, or one
    that no row uses, is not a difference (a default task no row falls back on, truncate when no
    row is over-long, max_new_tokens equal to the bundle's)."""
    tasks = {model.tasks.get(r.task) for r in rows}
    generates = any(t.kind != "classify" or not t.labels or opts.generate_labels for t in tasks)
    options = {
        "task": opts.task if any(r.default_task for r in rows) else None,
        "batch_size": opts.batch_size,
        "max_new_tokens": _budget(model, opts) if generates else None,
        "truncate": opts.truncate and any(r.truncated for r in rows),
        "generate_labels": opts.generate_labels and any(t.kind == "classify" for t in tasks),
    }
    if not model.prefix_cache:  # scores may differ in the last digit without it (docs/runtime.md)
        options["prefix_cache"] = False
    return {"input_sha256": sha256_file(input_path), "options": options,
            "bundle": model.bundle.manifest_sha256, "precision": model.default_precision}


