"""Hash checks already passed, remembered per file (``EdgeModel.load(..., verify="cached")``).

A load with ``verify=True`` hashes every weight file it opens (0.1-0.2 s for a 150 MB file).
With ``verify="cached"`` a file whose sha256 matched its manifest entry once is not hashed
again while the file system reports the same file: same device, inode, size, modification
and status-change times (``st_ctime`` changes with every write, rename over or ``touch``, and
no unprivileged call sets it back). Any change to the bundle hashes the changed files again.

Entries live in the user's cache folder (``$ALTER_EDGE_CACHE``, default ``~/.cache/alter-edge``)
under ``verified/``, one JSON file per checked file, named from that file's resolved path and
written atomically; nothing in a bundle decides where they are or whether they are read. A
missing, unreadable or stale entry just means the file is hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from alter_edge.base_model import cache_dir
from alter_edge.io import atomic_write_text


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class HashCache:
    """Which files matched which sha256, keyed by what ``stat`` says of them."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder is not None else cache_dir() / "verified"

    def _entry(self, path: Path) -> tuple[Path, str]:
        real = str(Path(path).resolve())
        return self.folder / (hashlib.sha256(real.encode()).hexdigest()[:40] + ".json"), real

    def known(self, path: Path, sha256: str) -> bool:
        """Whether ``path`` matched ``sha256`` before and is still the same file."""
        entry, real = self._entry(path)
        try:
            rec = json.loads(entry.read_text())
            st = os.stat(path)
        except (OSError, ValueError):
            return False
        return rec == {"path": real, "stat": _identity(st), "sha256": sha256}

    def remember(self, path: Path, sha256: str, before: os.stat_result) -> None:
        """Record that ``path`` (as ``stat`` saw it before it was hashed) matched ``sha256``;
        nothing is recorded if the file changed while it was hashed, or if the cache folder
        cannot be written."""
        entry, real = self._entry(path)
        try:
            if _identity(os.stat(path)) != _identity(before):
                return
            entry.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(entry, json.dumps({"path": real, "stat": _identity(before), "sha256": sha256}))
        except OSError:
            pass
