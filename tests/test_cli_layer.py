"""The command line as a layer: one-line errors with flags, the missing-extra message, and a
library that neither imports the CLI nor names its flags."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from alter_edge.cli import main
from alter_edge.cli.common import cli_message, handle_errors
from alter_edge.errors import BundleError

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = [p for d in ("alter_edge", "training", "export", "runtime") for p in (ROOT / d).rglob("*.py")
           if "cli" not in p.relative_to(ROOT).parts]


def _cli_without_torch(args: list[str]) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter where ``import torch`` fails, as on a runtime-only install
    (a subprocess: torch, onnx and their C extensions cannot be unloaded and imported again)."""
    code = ("import sys; sys.modules['torch'] = None; from alter_edge.cli import main; "
            f"main({args!r}, prog_name='alter-edge')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_missing_torch_names_the_extra(tmp_path):
    r = _cli_without_torch(["train", "--out", str(tmp_path / "run"), "--quiet"])
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "alter-edge train needs the 'train' extra" in out
    assert "pip install 'alter-edge[train]'" in out and "Traceback" not in out
    r = _cli_without_torch(["export", str(tmp_path / "ck"), "--out", str(tmp_path / "b")])
    assert r.returncode == 1 and "pip install 'alter-edge[export]'" in r.stdout + r.stderr
    # the torch-free commands still load
    r = _cli_without_torch(["inspect", str(tmp_path / "nope")])
    assert r.returncode == 1 and "bundle not found" in r.stdout + r.stderr


def test_other_missing_modules_are_not_blamed_on_an_extra():
    @click.command("x")
    @handle_errors(extra="train")
    def cmd():
        import alter_edge_no_such_module  # noqa: F401

    r = CliRunner().invoke(cmd, [])
    assert isinstance(r.exception, ModuleNotFoundError)


def test_library_option_names_become_the_commands_flags():
    @click.command("x")
    @click.option("--task", "tasks")
    @click.option("--overwrite", is_flag=True)
    @handle_errors()
    def cmd(tasks, overwrite):
        raise BundleError("out exists; pass `overwrite`, or `tasks` none; `not_an_option` stays")

    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == 1
    assert r.output.strip() == "Error: out exists; pass --overwrite, or --task none; `not_an_option` stays"
    assert cli_message("pass `overwrite`") == "pass `overwrite`"  # outside a command: unchanged


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_library_errors_name_no_flags_and_library_never_imports_the_cli():
    flagged, imports = [], []
    for path in LIBRARY:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                flagged += [f"{path.name}:{node.lineno}: {s}" for s in _strings(node.exc)
                            if any(w.startswith("--") and w[2:3].isalpha() for w in s.split())]
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alter_edge.cli"):
                imports.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name.startswith("alter_edge.cli") for a in node.names):
                imports.append(f"{path.name}:{node.lineno}")
    assert len(LIBRARY) > 30
    assert flagged == [] and imports == []


def test_every_command_is_registered():
    assert sorted(main.commands) == ["bench", "demo", "eval", "export", "inspect", "run", "serve", "train", "web"]


@pytest.mark.parametrize("cmd", ["train", "eval", "export", "inspect", "run", "bench", "serve", "web", "demo"])
def test_help(cmd):
    r = CliRunner().invoke(main, [cmd, "-h"])
    assert r.exit_code == 0 and "Usage: main " + cmd in r.output


def test_demo_scores_reads_the_validation_report(runtime_bundle, tmp_path):
    """``alter-edge demo scores``: the dev table of the quantized multi-task graph's check."""
    import json
    import shutil

    from alter_edge.tasks import TaskRegistry

    r = CliRunner().invoke(main, ["demo", "scores", str(runtime_bundle)])
    assert r.exit_code == 0 and "no dev scores in validation.json" in r.output  # fp32 only: none
    b = tmp_path / "b"
    b.mkdir()
    shutil.copy(runtime_bundle / "tasks.json", b / "tasks.json")
    names = TaskRegistry.load(b / "tasks.json").names
    check = {"check": "quantized_vs_fp32", "graph": "model.int8.onnx", "precision": "int8", "passed": True,
             "metric": {t: {"fp32": 0.5, "int8": 0.25} for t in names}}
    (b / "validation.json").write_text(json.dumps({"atol": 1e-4, "greedy_steps": 4, "passed": True,
                                                  "checks": [check]}))
    r = CliRunner().invoke(main, ["demo", "scores", str(b)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["graph", *sorted(names), "overall"]
    assert lines[1].split()[0] == "fp32" and lines[2].split() == ["int8", *["0.250"] * len(names), "0.250"]
