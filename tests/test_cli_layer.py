"""The command line as a layer: one-line errors with flags, the missing-extra message, and a
library that neither imports the CLI nor names its flags."""

from __future__ import annotations

import ast
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


def _block_torch(monkeypatch):
    """Make ``import torch`` fail as it does on a runtime-only install (modules already
    imported by other tests are dropped, so they import again and hit the block)."""
    for name in list(sys.modules):
        top = name.split(".")[0]
        if top in ("torch", "transformers", "onnx", "onnxscript") or name.startswith(
                ("alter_edge.training", "alter_edge.export", "alter_edge.mta", "alter_edge.inject")):
            parent, _, child = name.rpartition(".")
            if parent in sys.modules and hasattr(sys.modules[parent], child):
                # re-imports rebind the parent's attribute: restore it afterwards too
                monkeypatch.setattr(sys.modules[parent], child, getattr(sys.modules[parent], child))
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)


def test_missing_torch_names_the_extra(monkeypatch, tmp_path):
    _block_torch(monkeypatch)
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "run"), "--quiet"])
    assert r.exit_code == 1, r.output
    assert "alter-edge train needs the 'train' extra" in r.output
    assert "pip install 'alter-edge[train]'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["export", str(tmp_path / "ck"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 1 and "pip install 'alter-edge[export]'" in r.output
    # the torch-free commands still load
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "bundle not found" in r.output


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
    assert sorted(main.commands) == ["bench", "eval", "export", "inspect", "run", "train"]


@pytest.mark.parametrize("cmd", ["train", "eval", "export", "inspect", "run", "bench"])
def test_help(cmd):
    r = CliRunner().invoke(main, [cmd, "-h"])
    assert r.exit_code == 0 and "Usage: main " + cmd in r.output
