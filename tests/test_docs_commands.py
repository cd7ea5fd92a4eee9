"""Every ``alter-edge <command> ...`` the docs show uses flags the live CLI has.

Commands are read from README.md and docs/*.md: fenced code blocks (a line ending in ``\\``,
or an indented line starting with ``[`` or ``--``, continues the command above it) and inline
code spans that start with ``alter-edge <command>``. Each command's ``--help`` must run, and
each ``--flag`` shown must be one of that command's options (or the group's, like
``--verbose``), read from the click command itself, so a flag added to the CLI needs no change
here.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from alter_edge.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:alter-edge|alter_edge\.cli)(?:\s+-v|\s+--verbose)?\s+([a-z][a-z-]*)(.*)")
FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
FENCE = re.compile(r"^\s*```")


def _logical_lines(block: list[str]) -> list[tuple[int, str]]:
    """A code block's lines (index in the block, text) with continuations joined onto the
    command line they continue."""
    out: list[tuple[int, str]] = []
    for i, line in enumerate(block):
        if out and (out[-1][1].endswith("\\") or re.match(r"\s+(\[|--)", line)):
            out[-1] = (out[-1][0], out[-1][1].rstrip("\\") + " " + line.strip())
        else:
            out.append((i, line))
    return out


def shown_commands() -> list[tuple[str, int, str, str]]:
    """(doc, line number, command, the rest of its line) for each invocation the docs show."""
    found = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        in_block, block, start = False, [], 0
        for i, line in enumerate(lines, 1):
            if FENCE.match(line):
                if in_block:
                    for k, text in _logical_lines(block):
                        for m in COMMAND.finditer(text):
                            found.append((doc.name, start + 1 + k, m.group(1), m.group(2)))
                in_block, block, start = not in_block, [], i
                continue
            if in_block:
                block.append(line)
            else:
                for span in re.findall(r"`([^`]+)`", line):
                    m = COMMAND.match(span.strip())
                    if m:
                        found.append((doc.name, i, m.group(1), m.group(2)))
    return found


def _flags(cmd: click.Command) -> set[str]:
    ctx = click.Context(cmd, info_name=cmd.name)
    return {o for p in cmd.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}


def test_the_docs_show_commands():
    found = shown_commands()
    assert {c for _, _, c, _ in found} >= {"train", "eval", "export", "inspect", "run", "bench"}, found


def test_every_flag_shown_in_the_docs_exists():
    group_flags = _flags(main)
    runner = CliRunner()
    helped: dict[str, set[str]] = {}
    bad = []
    for doc, line, name, rest in shown_commands():
        cmd = main.commands.get(name)
        if cmd is None:
            bad.append(f"{doc}:{line}: alter-edge {name}: no such command")
            continue
        words = rest.split()
        if isinstance(cmd, click.Group) and words and words[0] in cmd.commands:  # alter-edge demo scores
            name, cmd = f"{name} {words[0]}", cmd.commands[words[0]]
        if name not in helped:
            r = runner.invoke(main, [*name.split(), "--help"])
            assert r.exit_code == 0, (name, r.output)
            helped[name] = _flags(cmd)
        for flag in FLAG.findall(rest):
            if flag not in helped[name] | group_flags:
                bad.append(f"{doc}:{line}: alter-edge {name} {flag}: no such option")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("text", "expected"), [
    (["alter-edge export CK --out B [--task all]", "    [--int4] --data F"], [("export", {"--out", "--task",
                                                                                         "--int4", "--data"})]),
    (["alter-edge -v run B --input x \\", "  --resume"], [("run", {"--input", "--resume"})]),
])
def test_continuations_are_read(text, expected):
    got = []
    for _, t in _logical_lines(text):
        for m in COMMAND.finditer(t):
            got.append((m.group(1), set(FLAG.findall(m.group(2)))))
    assert got == expected
