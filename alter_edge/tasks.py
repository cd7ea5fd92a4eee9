"""The task registry: names, ids, kinds and label sets, as torch-free JSON.

Training writes ``tasks.json`` into every checkpoint, export copies it into every bundle and
the runtime reads it back, so the three always agree on which id means which task.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import TaskError

KINDS = ("classify", "generate")
DEFAULT_PROMPT_TEMPLATE = "{input}\nAnswer:"
TASKS_FORMAT_VERSION = 1
# The ALTER paper averages over task *types*: nli, classify (sentiment, question_type) and
# generate (question_gen). Tasks not named here are grouped by their kind.
PAPER_GROUPS = {"nli": "nli"}
# A task name becomes part of file names (a bundle's per-task graphs), so it is a plain name:
# 1-64 of these characters, not starting with a dot ("." and ".." included).
TASK_NAME_RULE = "1-64 characters of A-Z a-z 0-9 _ . -, not starting with a dot"
_TASK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def task_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a task name (one line, the name shown escaped), or None."""
    if not isinstance(name, str):
        return f"a task name must be a string, got {type(name).__name__}"
    if _TASK_NAME.fullmatch(name) is None or name.startswith("."):
        from .io import shown

        return f"task name {shown(name)} is not allowed: a task name is {TASK_NAME_RULE}"
    return None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    id: int
    kind: str  # "classify": answer is one of `labels`; "generate": free text
    labels: tuple[str, ...] = ()
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    group: str = ""  # score group for the overall mean; empty = the task's kind

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", PAPER_GROUPS.get(self.name, self.kind))
        problem = task_name_problem(self.name)
        if problem:
            raise TaskError(problem)
        if self.kind not in KINDS:
            raise TaskError(f"task {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "classify" and len(self.labels) < 2:
            raise TaskError(f"task {self.name!r}: a classify task needs at least 2 labels")
        if len(set(self.labels)) != len(self.labels):
            raise TaskError(f"task {self.name!r}: labels repeat")
        if any(not isinstance(lab, str) or not lab for lab in self.labels):
            raise TaskError(f"task {self.name!r}: labels must be non-empty strings, got {list(self.labels)!r}")
        if not isinstance(self.prompt_template, str) or "{input}" not in self.prompt_template:
            raise TaskError(f"task {self.name!r}: prompt_template must be a string containing "
                            f"'{{input}}', got {self.prompt_template!r}")
        try:  # "{0}", "{other}", "{input.x}", a lone "{": each fails when a prompt is built
            self.prompt_template.format(input="")
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            raise TaskError(f"task {self.name!r}: prompt_template {self.prompt_template!r} may hold "
                            f"only the field {{input}} (braces doubled as {{{{ }}}}): {e!r}") from e

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d


def _task_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskError(f"tasks.json: a task id must be an integer, got {value!r}")
    return value


def _labels(value: object) -> tuple:
    if not isinstance(value, list):
        raise TaskError(f"tasks.json: labels must be a list of strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class TaskRegistry:
    tasks: tuple[TaskSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise TaskError("a task registry needs at least one task")
        ids = [t.id for t in self.tasks]
        if sorted(ids) != list(range(len(ids))):
            raise TaskError(f"task ids must be 0..{len(ids) - 1} without gaps, got {sorted(ids)}")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise TaskError(f"task names repeat: {names}")
        object.__setattr__(self, "tasks", tuple(sorted(self.tasks, key=lambda t: t.id)))

    # -- lookups ---------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def get(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        from .io import shown  # repr() raises for an integer past Python's digit limit

        raise TaskError(f"unknown task {shown(name)}; known tasks: {', '.join(self.names)}")

    def id_of(self, name: str) -> int:
        return self.get(name).id

    def resolve(self, spec: str) -> list[TaskSpec]:
        """``"all"`` or a comma-separated list of names -> task specs (in id order)."""
        if spec.strip() == "all":
            return list(self.tasks)
        names = [s.strip() for s in spec.split(",") if s.strip()]
        if not names:
            raise TaskError(f"no task named in {spec!r}; use 'all' or names from: {', '.join(self.names)}")
        return sorted({self.get(n).name: self.get(n) for n in names}.values(), key=lambda t: t.id)

    # -- (de)serialisation -----------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format_version": TASKS_FORMAT_VERSION, "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def from_dict(cls, d: dict) -> TaskRegistry:
        if not isinstance(d, dict) or not isinstance(d.get("tasks"), list):
            raise TaskError("tasks.json must be an object with a 'tasks' list")
        if d.get("format_version", TASKS_FORMAT_VERSION) != TASKS_FORMAT_VERSION:
            raise TaskError(
                f"tasks.json format_version {d.get('format_version')} is not supported "
                f"(this alter-edge reads {TASKS_FORMAT_VERSION})"
            )
        try:
            specs = [
                TaskSpec(
                    name=t["name"],
                    id=_task_id(t["id"]),
                    kind=t["kind"],
                    labels=_labels(t.get("labels", [])),
                    prompt_template=t.get("prompt_template", DEFAULT_PROMPT_TEMPLATE),
                    group=t.get("group", ""),
                )
                for t in d["tasks"]
            ]
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, TaskError):
                raise
            raise TaskError(f"tasks.json: a task entry lacks a field or has a wrong type ({e!r})") from e
        return cls(tuple(specs))

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TaskRegistry:
        path = Path(path)
        if not path.is_file():
            raise TaskError(f"task registry not found: {path}")
        from .io import read_json

        return cls.from_dict(read_json(path, TaskError))

    @classmethod
    def infer(
        cls,
        rows: Iterable[dict],
        max_labels: int = 32,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    ) -> TaskRegistry:
        """Build a registry from data rows: a task whose targets form a small closed set
        (at most ``max_labels`` distinct values, each seen at least twice on average) is a
        classify task with those labels; anything else is a generate task. Ids follow the
        sorted task names, so the same data always gives the same ids."""
        targets: dict[str, list[str]] = {}
        for r in rows:
            targets.setdefault(r["task"], []).append(r["target"])
        specs = []
        for i, name in enumerate(sorted(targets)):
            ts = targets[name]
            distinct = sorted(set(ts))
            if 2 <= len(distinct) <= max_labels and len(distinct) * 2 <= len(ts):
                specs.append(TaskSpec(name, i, "classify", tuple(distinct), prompt_template))
            else:
                specs.append(TaskSpec(name, i, "generate", (), prompt_template))
        return cls(tuple(specs))

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in self.tasks:
            out.setdefault(t.group, []).append(t.name)
        return out

    def check_names(self, names: Sequence[str]) -> None:
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise TaskError(
                f"unknown task(s) {', '.join(map(repr, unknown))}; known tasks: {', '.join(self.names)}"
            )
