"""JSONL task data: strict loading with line-numbered errors, and a fixed stratified split.

A row is ``{"task": str, "input": str, "target": str}`` (the format of the ALTER task mix).
Loading is torch-free. A line is decoded by ``alter_edge.io.json_line_problem`` (shared with
the runtime); task names are checked here, where they enter (``alter_edge.tasks``' rule).
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, DataError
from .io import json_line_problem, jsonl_lines, text_problem
from .tasks import task_name_problem

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("task", "input", "target")
MAX_REPORTED = 5


@dataclass(frozen=True)
class Example:
    task: str
    input: str
    target: str
    line: int = 0  # 1-based line in the source file (0 = made in code)

    def to_dict(self) -> dict:
        return {"task": self.task, "input": self.input, "target": self.target}


def parse_line(raw: bytes, lineno: int, fields: Sequence[str] = REQUIRED_FIELDS) -> dict:
    """Decode one JSONL line into a dict with string ``fields`` (valid Unicode, not blank);
    raise DataError naming the line and the problem. Never another exception: bad UTF-8, bad
    JSON, NaN, a number over Python's digit limit, nesting too deep, a lone surrogate."""
    obj, problem = json_line_problem(raw)
    if problem:
        raise DataError(f"line {lineno}: {problem}; each row is a JSON object with string fields "
                        f"{', '.join(fields)}")
    if not isinstance(obj, dict):
        raise DataError(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
    missing = [f for f in fields if f not in obj]
    if missing:
        raise DataError(
            f"line {lineno}: missing field(s) {', '.join(missing)}; each row needs {', '.join(fields)}"
        )
    for f in fields:
        problem = text_problem(obj[f])
        if problem:
            raise DataError(f"line {lineno}: field {f!r} {problem}")
    return obj


def load_jsonl(path: str | Path, fields: Sequence[str] = REQUIRED_FIELDS) -> list[Example]:
    """Load a task file. Blank lines are skipped; any bad line fails the whole load with an
    error listing the first few bad lines (training on silently dropped rows hides bugs)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    rows: list[Example] = []
    errors: list[str] = []
    for lineno, raw in jsonl_lines(path):
        try:
            obj = parse_line(raw, lineno, fields)
        except DataError as e:
            errors.append(str(e))
            continue
        problem = task_name_problem(obj["task"]) if "task" in fields else None
        if problem:
            errors.append(f"line {lineno}: {problem}")
            continue
        rows.append(Example(obj["task"], obj["input"], obj["target"], lineno))
    if errors:
        more = f" (and {len(errors) - MAX_REPORTED} more)" if len(errors) > MAX_REPORTED else ""
        raise DataError(f"{path}: {len(errors)} bad line(s): " + "; ".join(errors[:MAX_REPORTED]) + more)
    if not rows:
        raise DataError(f"{path}: no data rows; expected JSONL lines with fields {', '.join(fields)}")
    return rows


# what checkpoints record for the built-in mix; the version changes when the mix does
BUILTIN_SOURCE = "built-in task mix v2 (alter_edge.default_mix)"
BUILTIN_DEV_ROWS = 100  # per task (half of a task with fewer than twice as many rows)


def recorded_data_path(recorded: str) -> Path | None:
    """The data a checkpoint recorded (``load_task_rows``' source) as ``load_task_rows`` takes
    it: None for the built-in mix, else the file's path."""
    return None if recorded == BUILTIN_SOURCE else Path(recorded)


def check_recorded_data(path: Path, sha256: str | None) -> None:
    """The data file a checkpoint recorded still holds the bytes it trained on (``sha256``, from
    its state; None: a checkpoint from before the hash was recorded, not checked): otherwise
    the dev split taken from it now is not the one held out in training."""
    if sha256 is None or not Path(path).is_file():
        return
    from .io import sha256_file

    now = sha256_file(path)
    if now != sha256:
        raise CheckpointError(f"the checkpoint's data file {path} changed since training (sha256 {now}, trained on "
                              f"{sha256}): its dev split is no longer the held-out one; pass the training data as "
                              "`data`, or other rows on purpose")


def load_task_rows(data: Path | None) -> tuple[list[Example], str]:
    """The rows of ``data`` (a JSONL file), or of the built-in task mix when ``data`` is None,
    with a description of the source (what checkpoints record as their data)."""
    if data is None:
        from .default_mix import build_default_mix

        return build_default_mix(), BUILTIN_SOURCE
    return load_jsonl(data), str(data)


def stratified_indices(
    rows: Sequence[Example], fraction: float, seed: int | str = 0, per_task: int | None = None
) -> tuple[list[int], list[int]]:
    """Indices of ``rows`` kept and set aside, per task by a seeded shuffle: ``round(n * fraction)``
    of each task's rows (at least 1 when a task has 2+ rows) are set aside, or with ``per_task``
    that many (``n // 2`` of a task with fewer than ``2 * per_task`` rows). Tasks in sorted
    order, each task's rows in shuffled order. Deterministic for a given row order and seed."""
    if per_task is not None and per_task < 1:
        raise DataError(f"the held-out rows per task must be >= 1, got {per_task}")
    if per_task is None and not 0.0 < fraction < 1.0:
        raise DataError(f"the held-out fraction must be in (0, 1), got {fraction}")
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_task[r.task].append(i)
    kept: list[int] = []
    aside: list[int] = []
    for task in sorted(by_task):
        items = list(by_task[task])
        random.Random(f"{seed}:{task}").shuffle(items)
        if per_task is not None:
            n_aside = min(per_task, len(items) // 2)
        else:
            n_aside = max(1, round(len(items) * fraction)) if len(items) >= 2 else 0
        aside.extend(items[:n_aside])
        kept.extend(items[n_aside:])
    return kept, aside


def stratified_split(
    rows: Sequence[Example], dev_fraction: float = 0.1, seed: int = 0, per_task: int | None = None
) -> tuple[list[Example], list[Example]]:
    """The fixed train/dev split: ``stratified_indices`` with the dev rows set aside. Dev rows
    whose (task, input) also occurs in train are kept (the split stays what its seed says) and
    counted in a warning: a dev score on them measures recall, not generalisation."""
    if per_task is None and not 0.0 < dev_fraction < 1.0:
        raise DataError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    kept, aside = stratified_indices(rows, dev_fraction, seed, per_task)
    train, dev = [rows[i] for i in kept], [rows[i] for i in aside]
    seen = {(r.task, r.input) for r in train}
    leaked = sum((r.task, r.input) in seen for r in dev)
    if leaked:
        log.warning("%d of %d dev rows repeat a train row's task and input (duplicates in the data); "
                    "their dev scores are not held out", leaked, len(dev))
    return train, dev


def split_task_rows(rows: Sequence[Example], source: str, dev_fraction: float = 0.1,
                    seed: int = 0) -> tuple[list[Example], list[Example]]:
    """The train/dev split every stage uses: a data file's is ``dev_fraction`` of each task;
    the built-in mix's is ``BUILTIN_DEV_ROWS`` rows a task, so its dev scores mean something."""
    per_task = BUILTIN_DEV_ROWS if source == BUILTIN_SOURCE else None
    return stratified_split(rows, dev_fraction, seed, per_task)


def spread_head(rows: Sequence[Example], n: int) -> list[Example]:
    """The first ``n`` rows taken round-robin across tasks (each task's rows in file order),
    so a capped evaluation still sees every task; ``n <= 0`` keeps every row."""
    if n <= 0 or n >= len(rows):
        return list(rows)
    by_task: dict[str, list[Example]] = defaultdict(list)
    for r in rows:
        by_task[r.task].append(r)
    queues = [list(reversed(v)) for _, v in sorted(by_task.items())]
    out: list[Example] = []
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return out


def task_counts(rows: Iterable[Example]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r.task] += 1
    return dict(sorted(counts.items()))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    from .io import atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
