"""Bundle errors that say what is wrong (issue 36 item 13): a format_version of the wrong type,
and a precision the bundle lacks while another precision of the same graph is there."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from alter_edge.errors import BundleError
from alter_edge.runtime import load_bundle


@pytest.mark.parametrize("version, words", [
    (True, "format_version must be an integer, got true"),
    (1.0, "format_version must be an integer, got a number 1.0"),
    ("2", "format_version must be an integer, got a string '2'"),
    (1, "format_version 1 (one traced graph per task) is no longer read"),
    (99, "format_version 99 is not supported"),
])
def test_format_version_of_the_wrong_type_is_named(runtime_bundle, tmp_path, version, words):
    """``format_version: true`` said "format_version 1 is no longer read" (True == 1)."""
    b = tmp_path / "b"
    shutil.copytree(runtime_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["format_version"] = version
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError) as e:
        load_bundle(b)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_missing_precision_names_the_ones_there(runtime_bundle):
    """``--precision int4`` on an int8-only bundle said "no multi-task graph" though an int8 one exists."""
    b = load_bundle(runtime_bundle)
    int8 = replace(b, graphs=tuple(replace(g, precision="int8") for g in b.graphs))
    for task in (None, "echo", "parity"):
        with pytest.raises(BundleError) as e:
            int8.graph_for(task, "int4")
        msg = str(e.value)
        assert "no multi-task graph" not in msg and "int4" in msg and "int8" in msg, msg
        assert "precision int8" in msg or "precisions: int8" in msg, msg
    only_echo = replace(b, graphs=tuple(g for g in b.graphs if g.task == "echo"))
    with pytest.raises(BundleError, match="no multi-task graph"):
        only_echo.graph_for("parity")


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["graphs"][1]["external_data"].__setitem__(0, "x" * 300), "graphs[1].external_data[0]"),
    (lambda m: m["graphs"][0]["external_data"].append("w\u202e.bin"), "graphs[0].external_data[1]"),
])
def test_a_bad_manifest_entry_is_one_short_line_naming_it(runtime_bundle, tmp_path, edit, words):
    """The fuzz campaign's find: an unlisted external_data entry was echoed in full (300
    characters) without the field's name."""
    b = tmp_path / "b"
    shutil.copytree(runtime_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    edit(m)
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError) as e:
        load_bundle(b)
    msg = str(e.value).replace(str(b), "B")
    assert words in msg and "\n" not in msg and len(msg) < 250, msg


def test_manifest_task_names_are_shown_escaped(runtime_bundle, tmp_path):
    """The fuzz campaign's find: a task name with a newline in manifest.json's tasks split the error."""
    b = tmp_path / "b"
    shutil.copytree(runtime_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["tasks"] = ["a\nb", "echo", "\u202eparity"]
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError) as e:
        load_bundle(b)
    msg = str(e.value)
    assert "\n" not in msg and "\u202e" not in msg and "'a\\nb'" in msg and "manifest.json tasks" in msg, msg


@pytest.mark.parametrize("where", ["graph", "files"])
def test_a_path_with_a_lone_surrogate_is_refused_in_one_line(runtime_bundle, tmp_path, where):
    """The campaign's find (seed 11): a graph path "\\ud800" was a UnicodeEncodeError from
    os.path.realpath, a traceback."""
    b = tmp_path / "b"
    shutil.copytree(runtime_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    if where == "graph":
        m["graphs"][0]["path"] = "x\ud800.onnx"
    else:
        m["files"]["w\udc80.bin"] = "d" * 64
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError) as e:
        load_bundle(b)
    msg = str(e.value)
    assert "not valid Unicode" in msg and "\n" not in msg, msg
    msg.encode("utf-8")  # the message itself can be printed


@pytest.mark.parametrize("name", ["new\nline", "\u202eevil", "bad\udcffname"])
@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_an_unlisted_entry_with_an_odd_name_is_named_in_one_printable_line(runtime_bundle, tmp_path, name, kind):
    """The campaign's find: an entry named with a newline, U+202E or a byte that is not UTF-8
    was put into the error as it is (two lines, a line shown reversed, a message that cannot be
    encoded)."""
    import os

    b = tmp_path / "b"
    shutil.copytree(runtime_bundle, b)
    path = b / name
    if kind == "file":
        path.write_bytes(b"x")
    else:
        path.symlink_to(b / "tokenizer.json")
    with pytest.raises(BundleError) as e:
        load_bundle(b)
    msg = str(e.value)
    assert "\n" not in msg and "\u202e" not in msg, repr(msg)
    msg.encode("utf-8")
    assert repr(os.fsdecode(os.fsencode(name)))[1:-1] in msg or repr(name)[1:-1] in msg, repr(msg)
