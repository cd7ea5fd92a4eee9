"""The batch job's files: output records as JSONL, the resumable progress file, output-path safety.

Progress survives a crash in ``OUTPUT.partial``: a header line (input hash, effective
settings, bundle) then one finished record per line, appended and fsync'ed after every batch
(``batch_size`` finished rows). A torn last line (a kill mid-write) is dropped on resume, so a
resumed run redoes only the unsaved rows and the final file equals an uninterrupted run's. The
file is not trusted: a resume keeps its records only when each is for a line holding a good row
of this input, once, with that row's id and task (records come in the order rows finished, not
in line order); any other line refuses the resume, naming it.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from alter_edge.errors import DataError, OutputError
from alter_edge.io import atomic_write_bytes, json_line_problem, shown

from .rows import Row

log = logging.getLogger(__name__)

PARTIAL_VERSION = 3  # 2: effective settings in the header; 3: the bundle is its manifest's sha256


def record_line(record: dict) -> str:
    """One output record as its JSONL line (the local and the Ray job write the same bytes)."""
    return jsonl([record]).decode("utf-8")


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

    def load(self, rows: Mapping[int, Row] | None = None) -> dict[int, dict]:
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
            rec, problem = parse_record(raw, rows, done)
            if problem:
                raise DataError(f"{self.path}: line {k} {problem}; the file was changed by something other "
                                "than this job: delete it to start over")
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


def record_problem(raw: bytes, rows: Mapping[int, Row] | None, done: Mapping[int, dict]) -> str | None:
    """What is wrong with one saved line of a partial file, or None: it must be a JSON object
    whose ``line`` is an integer naming a good row of the input (``rows``; None: any line),
    not saved before (``done``), with that row's ``id`` and ``task`` and a string ``output``, or
    the error record :func:`jsonl` writes for a result it cannot write (id null, an ``error``)."""
    return parse_record(raw, rows, done)[1]


def parse_record(raw: bytes, rows: Mapping[int, Row] | None, done: Mapping[int, dict]) -> tuple[dict, str | None]:
    """(the saved line decoded, :func:`record_problem`'s answer for it): one JSON decode."""
    rec, problem = json_line_problem(raw)
    return rec, _problem(rec, problem, rows, done)


def _problem(rec, problem, rows: Mapping[int, Row] | None, done: Mapping[int, dict]) -> str | None:
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
