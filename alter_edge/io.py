"""Small file helpers: atomic writes, hashing, JSON lines, and the full-disk error.

Torch-free (the runtime imports it)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc where it can be, else set and restored under a lock)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``. The file gets
    the mode a plain ``open`` would give it (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: Path, overwrite: bool = False, owned: Collection[str] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` in one rename
    (the old one, when ``overwrite``, is moved aside first and removed after). On error the
    temporary directory is removed and ``final`` is left as it was. The directory gets the mode
    a plain ``mkdir`` would give it (0777 less the umask).

    ``owned``: the names of the top-level entries this writer makes. Every other entry of an
    existing ``final`` (a user's notes, reports) is kept: hard-linked (copied where links fail)
    into the new directory before the swap, and any entry that appeared or changed in the old
    one during the swap is moved across after it; only owned entries are dropped with the old
    directory. Without ``owned`` the old directory is replaced whole."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # as mkdir would make it, not mkdtemp's 0700
        yield tmp
        old = None
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} already exists")
            if owned is not None and final.is_dir():
                _carry_foreign(final, tmp, owned)
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            if owned is not None and old.is_dir():
                _carry_foreign(old, final, owned, move=True)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_foreign(src: Path, dst: Path, owned: Collection[str], move: bool = False) -> None:
    """Put every entry of ``src`` not named in ``owned`` into ``dst``: linked, or with ``move``
    renamed (replacing a different file of that name, which is an older copy of it)."""
    for entry in os.scandir(src):
        if entry.name in owned:
            continue
        target = dst / entry.name
        if move:
            if os.path.lexists(target):
                try:
                    if os.path.samefile(entry.path, target) or entry.is_dir(follow_symlinks=False):
                        continue
                except OSError:
                    pass
            os.replace(entry.path, target)
        elif entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, str(target))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The file's sha256, read in ``chunk``-byte blocks into one reused buffer. Not from a memory
    map: every page of a mapped file counts in the process's resident memory while mapped, so
    hashing a 150 MB weight file that way raised a load's peak RSS by 150 MB (a load hashes
    weights in a thread while onnxruntime builds its session; reads and hashing both release
    the GIL)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def read_json(path: Path, error: type[Exception], what: str = "") -> object:
    """Parse a JSON file; bad JSON or bad UTF-8 (also nesting too deep for the parser, or a
    number over Python's digit limit) raises ``error`` naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError as e:
        raise error(f"{path}: {what + ' ' if what else ''}is not valid JSON (nested too deep)") from e
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise error(f"{path}: {what + ' ' if what else ''}is not valid JSON ({str(e)[:200]})") from e


def json_line_problem(raw: bytes) -> tuple[object, str | None]:
    """``(the decoded JSON value, None)`` of one JSONL line, or ``(None, why it is not one)``.
    Never raises: not UTF-8, not JSON, NaN/Infinity (not JSON numbers), a number longer than
    Python's digit limit and nesting deeper than the parser goes each give a reason."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 ({e.reason} at byte {e.start})"
    try:
        return json.loads(text, parse_constant=_reject_constant), None
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at column {e.colno})"
    except RecursionError:
        return None, "not valid JSON (nested too deep for the parser)"
    except ValueError as e:
        msg = str(e)
        if "digits" in msg:  # int(): "Exceeds the limit (4300 digits) for integer string conversion..."
            limit = _digit_limit()
            return None, f"not valid JSON (a number has more than {limit} digits, the most allowed)"
        return None, f"not valid JSON ({msg[:120]})"


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _digit_limit() -> int:
    import sys

    get = getattr(sys, "get_int_max_str_digits", None)
    return get() if get else 4300


def unicode_problem(text: str, hint: bool = True) -> str | None:
    """Why ``text`` cannot be written as UTF-8 (a lone surrogate, which a JSON ``\\ud800``
    escape makes), or None; ``hint`` adds how a JSON escape goes wrong."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        why = f"a lone surrogate {text[e.start]!r} at character {e.start}"
        if hint:
            why += "; a \\u escape of a surrogate must be half of a high-low pair"
        return f"is not valid Unicode ({why})"
    return None


def text_problem(value: object, hint: bool = True) -> str | None:
    """Why ``value`` cannot be a row's text field (a training row's task/input/target, a batch
    row's input): not a string, empty or blank, not valid Unicode; or None."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "is empty"
    return unicode_problem(value, hint)


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, the line's bytes without its line end)`` of every line of a JSONL
    file that is not blank; decode each with :func:`json_line_problem`. Training data, the
    runtime's batch input and the Ray job all read lines here."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                yield lineno, raw.rstrip(b"\r\n")


def shown(value: object, limit: int = 80) -> str:
    """``value`` as one printable line for an error message: repr (which escapes control and
    format characters, NUL, newlines, U+202E and lone surrogates), cut to ``limit``."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[:limit] + "..."


# -- a full disk -------------------------------------------------------------------------------
def is_disk_full(e: BaseException) -> bool:
    """``e`` says the disk (or the user's quota) is full: an OSError with ENOSPC/EDQUOT, or a
    library's error that carries the OS's message (safetensors' SafetensorError does)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "code: 28," in text


def disk_full(path: Path, pending: int) -> OSError:
    """The ENOSPC error to raise when writing ``pending`` bytes to ``path`` failed for space
    (``pending`` travels with it, for :func:`disk_full_error`)."""
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    err.pending = pending  # type: ignore[attr-defined]
    return err


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed; 0 when it is gone)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            total += st.st_size
    return total


def disk_full_error(what: str, folder: Path, needed: int, outcome: str, bound: str = "at least") -> OutputError:
    """One line for a write that ran out of space: the folder, the bytes ``what`` needs there
    (``bound``: "at least", or "about" for an estimate), and what was left (``outcome``)."""
    if needed <= 0:
        return OutputError(f"no space left on device in {folder}: {what} could not even make its temporary folder "
                           f"there; {outcome}; free some space (or inodes) or choose another folder")
    return OutputError(f"no space left on device in {folder}: {what} needs {bound} {needed:,} bytes "
                       f"({needed / 2**20:.1f} MiB) there; {outcome}; free some space or choose another folder")
