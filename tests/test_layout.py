"""One import path: the installed ``alter_edge.*``. The top-level folders ``training/``,
``export/`` and ``runtime/`` are mapped into it by pyproject.toml; they must not also import
bare, and nothing puts the repository root, tests/ or benchmarks/ on ``sys.path``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BARE = ("runtime", "export", "training", "testing", "tests", "benchmarks", "helpers", "conftest")


def test_bare_names_do_not_import(tmp_path):
    """A fresh interpreter outside the repository: only alter_edge.* imports."""
    code = (
        "import importlib, json\n"
        "import alter_edge.runtime, alter_edge.export, alter_edge.training, alter_edge.testing\n"
        "bad = {}\n"
        f"for name in {BARE!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        continue\n"
        "    bad[name] = str(importlib.import_module(name).__spec__.origin)\n"
        "print(json.dumps(bad))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}  # no PYTHONPATH
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {}


def test_pytest_puts_no_project_folder_on_sys_path(pytestconfig):
    """--import-mode=importlib (pyproject.toml) and no tests/__init__.py: pytest inserts neither
    the root nor tests/ into sys.path. (``python -m pytest`` adds its working directory itself:
    Python's entry, not pytest's, so the root is checked only when pytest runs as a script.)"""
    import os

    assert pytestconfig.getoption("importmode") == "importlib"
    assert not (ROOT / "tests" / "__init__.py").exists()
    entries = [Path(p or os.getcwd()).resolve() for p in sys.path]
    assert ROOT / "tests" not in entries and ROOT / "benchmarks" not in entries, sys.path
    if not sys.argv[0].endswith("__main__.py"):
        assert ROOT not in entries, sys.path


def test_no_source_edits_sys_path_or_pythonpath():
    """No test, benchmark or script adds a folder to sys.path or sets PYTHONPATH, and nothing
    outside tests imports from tests."""
    pattern = re.compile(r"sys\.path\.(insert|append|extend)|PYTHONPATH|^\s*(from|import) tests\b", re.M)
    offenders = []
    for folder in ("tests", "benchmarks", "scripts", "examples", "alter_edge", "training", "export", "runtime",
                   "testing"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".sh") or "node_modules" in path.parts or path == Path(__file__):
                continue
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
                          for m in pattern.finditer(path.read_text())]
    assert offenders == []
