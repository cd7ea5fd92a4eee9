"""Hostile input to training, export and inspect (issue 36): task names that would become paths,
bundles with entries the manifest does not list, resumes and overwrites that would lose files,
a resume on other data, a full disk, and data lines that would end in a traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from alter_edge.cli import main
from alter_edge.config import TrainConfig
from alter_edge.data import load_jsonl, write_jsonl
from alter_edge.errors import BundleError, CheckpointError, DataError, OutputError, TaskError
from alter_edge.tasks import TaskRegistry, TaskSpec
from alter_edge.testing import TINY_ROWS, _synthetic_rows, make_tiny_checkpoint

EVIL = "x/../../escaped/pwned"
BAD_NAMES = [EVIL, "a\x00b", "a\nb", "a\u202eb", "", ".hidden", "..", "n" * 65, "a b", "a/b", "a\\b"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTER_EDGE_CACHE", str(tmp_path / "cache"))


def _one_line_error(r) -> str:
    """The CLI failed with one line, no traceback; returns it."""
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    assert r.output.strip().count("\n") == 0, r.output
    return r.output.strip()


def _cfg(base, **kw):
    d = dict(base_model=str(base), stage1_steps=2, stage2_steps=1, batch_size=4, save_every=1, eval_max_rows=3,
             eval_max_new_tokens=2, mta={"num_top_layers": 2, "adapter_kind": "lora"})
    d.update(kw)
    return TrainConfig(**d)


# -- 1. task names -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_task_name_in_the_data_is_refused_naming_line_and_name(tmp_path, name):
    rows = [dict(TINY_ROWS[0]), {**TINY_ROWS[1], "task": name}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_jsonl(tmp_path / "d.jsonl")
    msg = str(e.value)
    assert "line 2" in msg
    assert "field 'task' is empty" in msg if name == "" else repr(name)[:60] in msg and "A-Z a-z 0-9" in msg
    assert "\n" not in msg and "\x00" not in msg and "\u202e" not in msg


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_task_registry_refuses_a_bad_name(name):
    with pytest.raises(TaskError, match="task name"):
        TaskSpec(name, 0, "generate")
    d = TaskRegistry((TaskSpec("ok", 0, "generate"),)).to_dict()
    d["tasks"][0]["name"] = name
    with pytest.raises(TaskError, match="task name"):
        TaskRegistry.from_dict(d)


def test_good_task_names_pass():
    for name in ("nli", "question_type", "a.b-c_9", "A" * 64, "x."):
        TaskSpec(name, 0, "generate")


@pytest.mark.parametrize("merged", [False, True])
def test_export_writes_nothing_outside_the_bundle(tiny_llama_dir, tmp_path, monkeypatch, merged):
    """Even with the registry's check switched off, the exporter refuses a graph path that would
    leave the bundle before it writes anything."""
    from alter_edge import tasks as tasks_mod
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    ck = make_tiny_checkpoint(tmp_path / "ck", tiny_llama_dir)
    monkeypatch.setattr(tasks_mod, "task_name_problem", lambda name: None)
    reg = json.loads((ck / "tasks.json").read_text())
    reg["tasks"][0]["name"] = EVIL
    (ck / "tasks.json").write_text(json.dumps(reg))
    work = tmp_path / "work"
    work.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BundleError, match="outside the bundle"):
        export_checkpoint(ck, work / "B", ExportOptions(tasks="all", int8=True, merged=merged, progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(work.iterdir()) == []


# -- 3. bundles with unlisted entries ------------------------------------------------------------
def _copy_bundle(runtime_bundle, tmp_path) -> Path:
    b = tmp_path / "B"
    shutil.copytree(runtime_bundle, b)
    return b


def _spoilers():
    def symlink_dir(b):
        (b / "etc_link").symlink_to("/etc")
        return "etc_link"

    def fifo(b):
        os.mkfifo(b / "fifo")
        return "fifo"

    def deep_fifo(b):
        (b / "d" / "e").mkdir(parents=True)
        os.mkfifo(b / "d" / "e" / "fifo")
        return "d/e/fifo"

    def deep_file(b):
        (b / "d" / "e").mkdir(parents=True)
        (b / "d" / "e" / "x.txt").write_text("x")
        return "d/e/x.txt"

    def empty_dir(b):
        (b / "empty").mkdir()
        return "empty"

    def listed_symlink(b):  # a listed file replaced by a symlink to the same bytes elsewhere
        target = b.parent / "tasks-elsewhere.json"
        shutil.copy(b / "tasks.json", target)
        (b / "tasks.json").unlink()
        (b / "tasks.json").symlink_to(target)
        return "tasks.json"

    def device(b):
        try:
            os.mknod(b / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except (PermissionError, OSError):
            pytest.skip("cannot make a device node here")
        return "null"

    return [symlink_dir, fifo, deep_fifo, deep_file, empty_dir, listed_symlink, device]


@pytest.mark.parametrize("spoil", _spoilers(), ids=lambda f: f.__name__)
def test_inspect_and_load_refuse_unlisted_entries(runtime_bundle, tmp_path, spoil):
    from alter_edge.runtime.bundle import load_bundle

    b = _copy_bundle(runtime_bundle, tmp_path)
    entry = spoil(b)
    with pytest.raises(BundleError) as e:
        load_bundle(b)
    assert entry in str(e.value)
    line = _one_line_error(CliRunner().invoke(main, ["inspect", str(b)]))
    assert entry in line and "hashes: ok" not in line


def test_inspect_passes_a_clean_bundle(runtime_bundle, tmp_path):
    b = _copy_bundle(runtime_bundle, tmp_path)
    r = CliRunner().invoke(main, ["inspect", str(b)])
    assert r.exit_code == 0 and "hashes: ok" in r.output, r.output


# -- 5 and 8. resume --------------------------------------------------------------------------------
def test_resume_keeps_the_users_files(trainable_llama_dir, tiny_data, tmp_path):
    from alter_edge.training.trainer import run_training

    out = tmp_path / "run"
    cfg = _cfg(trainable_llama_dir)
    run_training(tiny_data, out, cfg, progress=False, stop_after=1)
    (out / "notes.txt").write_text("my notes")
    (out / "my_eval.json").write_text('{"mine": 1}')
    (out / "mine").mkdir()
    (out / "mine" / "x.txt").write_text("x")
    state = run_training(tiny_data, out, cfg, resume=True, progress=False)
    assert state["complete"]
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "my_eval.json").read_text() == '{"mine": 1}'
    assert (out / "mine" / "x.txt").read_text() == "x"
    assert not (out / "optimizer.pt").exists()  # the trainer's own file, removed when done
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_resume_refuses_other_data(trainable_llama_dir, tiny_data, tmp_path):
    from alter_edge.io import sha256_file
    from alter_edge.training.trainer import run_training

    out = tmp_path / "run"
    cfg = _cfg(trainable_llama_dir)
    state = run_training(tiny_data, out, cfg, progress=False, stop_after=1)
    assert state["data_sha256"] == sha256_file(tiny_data)
    other = tmp_path / "other.jsonl"
    write_jsonl(other, _synthetic_rows(seed=1))  # the same tasks, other rows
    with pytest.raises(CheckpointError) as e:
        run_training(other, out, cfg, resume=True, progress=False)
    assert sha256_file(tiny_data) in str(e.value) and sha256_file(other) in str(e.value)
    with pytest.raises(CheckpointError, match="built-in"):
        run_training(None, out, cfg, resume=True, progress=False)
    # the same bytes under another name resume, and the state then names the file now used
    moved = tmp_path / "moved.jsonl"
    shutil.copy(tiny_data, moved)
    state = run_training(moved, out, cfg, resume=True, progress=False)
    assert state["complete"] and state["data"] == str(moved)
    assert json.loads((out / "state.json").read_text())["data"] == str(moved)


# -- 6. export --overwrite never destroys its input --------------------------------------------------
def test_export_refuses_an_output_that_is_contains_or_lies_inside_its_input(tiny_llama_dir, tmp_path):
    ck = make_tiny_checkpoint(tmp_path / "P" / "ck", tiny_llama_dir)
    (ck / "my_notes.txt").write_text("mine")
    (tmp_path / "P" / "other.txt").write_text("other")
    before = {p: p.read_bytes() for p in (tmp_path / "P").rglob("*") if p.is_file()}
    for out in (ck, tmp_path / "P", ck / "sub", tmp_path / "P" / "." / "ck"):
        line = _one_line_error(CliRunner().invoke(main, ["export", str(ck), "--out", str(out), "--overwrite",
                                                         "--quiet"]))
        assert "--out" in line and "checkpoint" in line, line
    data = tmp_path / "D" / "data.jsonl"
    data.parent.mkdir()
    write_jsonl(data, TINY_ROWS)
    line = _one_line_error(CliRunner().invoke(main, ["export", str(ck), "--out", str(data.parent), "--overwrite",
                                                     "--data", str(data), "--quiet"]))
    assert "--data" in line
    assert {p: p.read_bytes() for p in (tmp_path / "P").rglob("*") if p.is_file()} == before
    assert data.is_file()


def test_export_overwrite_replaces_only_a_bundle(tiny_llama_dir, tmp_path):
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    ck = make_tiny_checkpoint(tmp_path / "ck", tiny_llama_dir)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    line = _one_line_error(CliRunner().invoke(main, ["export", str(ck), "--out", str(mine), "--overwrite",
                                                     "--quiet"]))
    assert "not an alter-edge bundle" in line and "--overwrite" in line
    assert (mine / "keep.txt").read_text() == "keep"
    (mine / "manifest.json").write_text('{"format": "something-else"}')
    _one_line_error(CliRunner().invoke(main, ["export", str(ck), "--out", str(mine), "--overwrite", "--quiet"]))
    assert (mine / "keep.txt").read_text() == "keep"
    # a bundle is replaced
    opts = ExportOptions(tasks=None, progress=False, steps=2)
    export_checkpoint(ck, tmp_path / "B", opts)
    (tmp_path / "B" / "validation.json").write_text("{}")
    export_checkpoint(ck, tmp_path / "B", ExportOptions(tasks=None, progress=False, steps=2, overwrite=True))
    assert json.loads((tmp_path / "B" / "validation.json").read_text()) != {}
    assert json.loads((tmp_path / "B" / "manifest.json").read_text())["format"] == "alter-edge-bundle"


# -- 10. a full disk ---------------------------------------------------------------------------------
def test_export_on_a_full_disk_is_one_error_and_leaves_nothing(tiny_llama_dir, tmp_path, monkeypatch):
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    ck = make_tiny_checkpoint(tmp_path / "ck", tiny_llama_dir)
    work = tmp_path / "work"
    work.mkdir()
    real_write = Path.write_bytes

    def full(self, data):
        if self.suffix == ".onnx":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OutputError) as e:
        export_checkpoint(ck, work / "B", ExportOptions(tasks=None, progress=False, steps=2))
    msg = str(e.value)
    assert "no space left" in msg and str(work) in msg and "bytes" in msg, msg
    assert list(work.iterdir()) == []


def test_train_on_a_full_disk_is_one_error_and_keeps_the_last_checkpoint(trainable_llama_dir, tiny_data, tmp_path,
                                                                         monkeypatch):
    from safetensors import SafetensorError

    from alter_edge.training import checkpoint as ckmod
    from alter_edge.training.trainer import run_training

    out = tmp_path / "run"
    cfg = _cfg(trainable_llama_dir)
    run_training(tiny_data, out, cfg, progress=False, stop_after=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(ckmod, "save_file", full)
    with pytest.raises(OutputError) as e:
        run_training(tiny_data, out, cfg, resume=True, progress=False)
    msg = str(e.value)
    assert "no space left" in msg and str(tmp_path) in msg and "bytes" in msg, msg
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # through the CLI: one line, and no run folder left behind
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "new"), "--base-model",
                                  str(trainable_llama_dir), "--stage1-steps", "2", "--stage2-steps", "1",
                                  "--batch-size", "4", "--top-layers", "2", "--eval-rows", "3", "--quiet"])
    line = _one_line_error(r)
    assert "no space left" in line and "bytes" in line, line
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture()
def small_disk(tmp_path):
    d = tmp_path / "small"
    if not _tmpfs(d, "64k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield d
    if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(d)], check=False)
        pytest.fail("the tmpfs was still busy: a file in it was left open")


def test_a_real_full_disk(tiny_llama_dir, trainable_llama_dir, tiny_data, tmp_path, small_disk):
    """On a 64 KiB tmpfs: the export and a training save each fail with one error line and
    leave the disk as they found it."""
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint
    from alter_edge.training.trainer import run_training

    ck = make_tiny_checkpoint(tmp_path / "ck", tiny_llama_dir)
    with pytest.raises(OutputError, match=f"no space left on device in {small_disk}: .* needs at least [0-9,]+ bytes"):
        export_checkpoint(ck, small_disk / "B", ExportOptions(tasks="all", progress=False, steps=2))
    assert list(small_disk.iterdir()) == []
    with pytest.raises(OutputError, match=f"no space left on device in {small_disk}: .* needs about [0-9,]+ bytes"):
        run_training(tiny_data, small_disk / "run", _cfg(trainable_llama_dir), progress=False, stop_after=1)
    assert list(small_disk.iterdir()) == []


# -- 11. data lines and checkpoints that used to end in a traceback ----------------------------------
HOSTILE_LINES = {
    "deep": (b"[" * 200_000, "nested too deep"),
    "digits": (b'{"task": "a", "input": ' + b"9" * 5000 + b', "target": "x"}', "digits"),
    "surrogate": (b'{"task": "a", "input": "\\ud800", "target": "x"}', "field 'input'"),
    "surrogate_target": (b'{"task": "a", "input": "hi", "target": "a\\udfffb"}', "field 'target'"),
    "nan": (b'{"task": "a", "input": NaN, "target": "x"}', "NaN"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LINES))
def test_hostile_data_lines_are_one_error_naming_the_line(tmp_path, case):
    raw, words = HOSTILE_LINES[case]
    p = tmp_path / "d.jsonl"
    p.write_bytes(json.dumps(TINY_ROWS[0]).encode() + b"\n" + raw + b"\n")
    with pytest.raises(DataError) as e:
        load_jsonl(p)
    assert "line 2" in str(e.value) and words in str(e.value), str(e.value)
    assert len(str(e.value)) < 600


@pytest.mark.parametrize("case", ["deep", "digits", "surrogate"])
def test_train_and_eval_give_one_line_on_hostile_data(runtime_ckpt_dir, tmp_path, case):
    raw, words = HOSTILE_LINES[case]
    p = tmp_path / "d.jsonl"
    p.write_bytes(json.dumps(TINY_ROWS[0]).encode() + b"\n" + raw + b"\n")
    line = _one_line_error(CliRunner().invoke(main, ["eval", str(runtime_ckpt_dir), "--data", str(p), "--quiet"]))
    assert "line 2" in line and words in line
    line = _one_line_error(CliRunner().invoke(main, ["train", "--data", str(p), "--out", str(tmp_path / "o"),
                                                     "--quiet"]))
    assert "line 2" in line and words in line
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_whose_tasks_do_not_match_num_tasks_is_refused(tiny_llama_dir, tiny_data, tmp_path):
    from alter_edge.training.checkpoint import load_checkpoint

    ck = make_tiny_checkpoint(tmp_path / "ck", tiny_llama_dir)
    reg = json.loads((ck / "tasks.json").read_text())
    reg["tasks"].append({"name": "extra", "id": 3, "kind": "generate"})
    (ck / "tasks.json").write_text(json.dumps(reg))
    with pytest.raises(CheckpointError, match="4 tasks.*num_tasks 3"):
        load_checkpoint(ck)
    line = _one_line_error(CliRunner().invoke(main, ["eval", str(ck), "--data", str(tiny_data), "--quiet"]))
    assert "num_tasks 3" in line
    line = _one_line_error(CliRunner().invoke(main, ["export", str(ck), "--out", str(tmp_path / "B"), "--quiet"]))
    assert "num_tasks 3" in line
    assert not (tmp_path / "B").exists()


def test_eval_and_export_refuse_a_recorded_data_file_that_changed(trainable_llama_dir, tmp_path):
    """The dev split eval and export read by default is the recorded file's: if its bytes changed
    since training (sha256 in state.json), that split is not the one held out, so both refuse."""
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint
    from alter_edge.training.trainer import evaluate_checkpoint, run_training

    data = tmp_path / "data.jsonl"
    write_jsonl(data, TINY_ROWS)
    out = tmp_path / "run"
    run_training(data, out, _cfg(trainable_llama_dir, stage1_steps=1, stage2_steps=0), progress=False)
    write_jsonl(data, _synthetic_rows(seed=3))
    with pytest.raises(CheckpointError, match="changed since training.*sha256"):
        evaluate_checkpoint(out, progress=False)
    with pytest.raises(CheckpointError, match="changed since training.*sha256"):
        export_checkpoint(out, tmp_path / "B", ExportOptions(tasks=None, int8=True, progress=False, steps=2))
    assert not (tmp_path / "B").exists()
    # naming the data explicitly is the user's choice
    res = evaluate_checkpoint(out, data=data, max_rows=3, progress=False)
    assert sum(res["counts"].values()) == 3


def test_a_full_disk_under_the_prefix_cache_only_warns(trainable_llama_dir, tiny_data, tmp_path, monkeypatch, caplog):
    """The frozen-prefix cache is an optimisation: when its folder is full, training goes on
    with a warning and leaves no temporary file there."""
    import safetensors.torch
    from safetensors import SafetensorError

    from alter_edge.training.trainer import run_training

    def full(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    state = run_training(tiny_data, tmp_path / "run", _cfg(trainable_llama_dir), progress=False, stop_after=1)
    assert state["step"] == 1
    assert "could not write the prefix cache" in caplog.text
    assert [p.name for p in (tmp_path / "cache" / "prefix").iterdir()] == []


def test_no_room_even_for_the_temporary_folder(tiny_llama_dir, tmp_path, monkeypatch):
    """A disk so full (or out of inodes) that the temporary sibling folder cannot be made is
    the same one line, from export and from a checkpoint save."""
    import tempfile

    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    ck = make_tiny_checkpoint(tmp_path / "ck", tiny_llama_dir)
    real = tempfile.mkdtemp

    def full(suffix=None, prefix=None, dir=None):
        if dir is not None and Path(dir) == tmp_path / "work":
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(dir, f"{prefix}abc{suffix}"))
        return real(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    (tmp_path / "work").mkdir()
    with pytest.raises(OutputError, match=f"no space left on device in {tmp_path / 'work'}: the bundle"):
        export_checkpoint(ck, tmp_path / "work" / "B", ExportOptions(tasks=None, progress=False, steps=2))
    assert list((tmp_path / "work").iterdir()) == []
