"""The batch job's rows: options, the row schema, one JSONL line -> a planned row or its error.

Input rows are ``{"id": ..., "task": ..., "input": ...}`` (``task`` optional when a default
task is given). A bad row (not UTF-8, not JSON, NaN or a number too big to read, nesting too
deep, an ``id`` that is not a string/finite number/null or not valid Unicode, no or empty
input, unknown task, an input over the bundle's ``max_prompt_tokens``) becomes an error record
``{"id", "line", "error"}``: no line, however bad, stops the job. The local job
(``runtime.batch``) and the Ray job (``runtime.ray``) both read rows here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from alter_edge.errors import ConfigError, DataError, TaskError
from alter_edge.io import json_line_problem, jsonl_lines, shown, unicode_problem
from alter_edge.tasks import TaskSpec

from .generate import shown_value
from .model import EdgeModel, input_problem

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Row:
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
    problem = id_problem(row_id)
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


def id_problem(row_id: object) -> str | None:
    if row_id is None or isinstance(row_id, (bool, int)):
        return None
    if isinstance(row_id, float):
        return None if math.isfinite(row_id) else f"must be a finite number, got {row_id!r}"
    if isinstance(row_id, str):
        return unicode_problem(row_id, hint=False)
    return f"must be a string, a number or null, got {type(row_id).__name__}"


def row_from_line(model: EdgeModel, raw: bytes | dict, lineno: int, opts: BatchOptions,
                  known: set[str] | None = None) -> Row | dict:
    """One input row -> its :class:`Row`, or its error record ``{"id", "line", "error"}``; no
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
            check_positions(model, prompt, parsed.task, opts)
        except (DataError, TaskError) as e:
            raise RowError(f"line {lineno}: {e}", row_id) from e
        return Row(lineno, row_id, parsed.task, prompt, cut, parsed.default_task)
    except RowError as e:
        return {"id": e.row_id, "line": lineno, "error": str(e)}
    except Exception as e:  # a row must never cost the others: record it, go on
        log.exception("line %d could not be read", lineno)
        return {"id": row_id, "line": lineno,
                "error": f"line {lineno}: cannot be read ({type(e).__name__}: {shown(str(e))})"}


def check_positions(model: EdgeModel, prompt: list[int], task: str, opts: BatchOptions) -> None:
    """The row's prompt plus what runs after it (its new tokens, or its task's longest label)
    fits the positions the bundle's graphs cover; else a DataError for this row alone."""
    limit = model.bundle.kv.max_sequence_length
    if scores_labels(model.tasks.get(task), opts):
        after, what = max(len(x) for x in model.label_ids(task)), "tokens of its longest label"
    else:
        after, what = budget(model, opts), "new tokens"
    if model.bundle.positions(len(prompt), after) <= limit:
        return
    if model.bundle.architecture == "encoder-decoder":  # the prompt runs in the encoder
        raise DataError(f"its {after} {what} exceed the {limit} decoder positions the bundle's graphs cover "
                        "(ask for fewer `max_new_tokens`)")
    raise DataError(f"its prompt of {len(prompt)} tokens plus {after} {what} exceed the {limit} positions "
                    "the bundle's graphs cover (ask for fewer `max_new_tokens`, or shorten the input)")


def read_rows(model: EdgeModel, path: Path, opts: BatchOptions) -> tuple[list[Row], dict[int, dict]]:
    """(good rows, error records by line). Blank lines are skipped. No line, however bad,
    stops the reading: each becomes one error record."""
    return parse_rows(model, jsonl_lines(path), opts)


def parse_rows(model: EdgeModel, lines: Iterable[tuple[int, bytes | dict]],
               opts: BatchOptions) -> tuple[list[Row], dict[int, dict]]:
    """(good rows, error records by line) of ``(line number, a JSONL line or a decoded row)``
    pairs (:func:`row_from_line` each); the local and the Ray job both read rows here."""
    rows: list[Row] = []
    errors: dict[int, dict] = {}
    known = set(model.tasks.names)
    for lineno, raw in lines:
        r = row_from_line(model, raw, lineno, opts, known)
        if isinstance(r, dict):
            errors[lineno] = r
        else:
            rows.append(r)
    return rows, errors


def scores_labels(spec: TaskSpec, opts: BatchOptions) -> bool:
    return spec.kind == "classify" and bool(spec.labels) and not opts.generate_labels


def budget(model: EdgeModel, opts: BatchOptions) -> int:
    return model.bundle.max_new_tokens if opts.max_new_tokens is None else opts.max_new_tokens
