"""The batch job under hostile input: a bad row never costs the good ones, resume from any
interruption, refusals that name the setting, output locations checked before the model loads."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest
from click.testing import CliRunner

from alter_edge.cli import main
from alter_edge.errors import DataError, OutputError, TaskError
from alter_edge.runtime.batch import BatchOptions, PartialFile, check_paths, run_jsonl
from alter_edge.testing import TINY_ROWS

GOOD = [{"id": f"r{i}", "task": r["task"], "input": r["input"]} for i, r in enumerate(TINY_ROWS[:8])]


def _write(path, lines):
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else json.dumps(ln).encode()) + b"\n"
                              for ln in lines))
    return path


def _records(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


HOSTILE = [
    (b'{"id": "\\udc80", "task": "echo", "input": "repeat cat dog"}', "field 'id' is not valid Unicode"),
    (b'{"id": "ok", "task": "echo", "input": "\\ud800"}', "field 'input' is not valid Unicode"),
    (b'{"id": ' + b"7" * 5000 + b', "task": "echo", "input": "x"}', "not valid JSON"),
    (b"[" * 200_000, "nested too deep"),
    (b'{"id": NaN, "task": "echo", "input": "x"}', "NaN is not a JSON number"),
    (b'{"id": -Infinity, "task": "echo", "input": "x"}', "-Infinity is not a JSON number"),
    (b'{"id": 1e400, "task": "echo", "input": "x"}', "field 'id' must be a finite number"),
    (b'{"id": [1], "task": "echo", "input": "x"}', "field 'id' must be a string, a number or null"),
    (b'{"id": "t", "task": "\\udc80", "input": "x"}', "unknown task '\\udc80'"),
    (b'{"id": "n", "task": "echo", "input": 5}', "field 'input' must be a string"),
]


def test_hostile_rows_are_one_error_record_each(edge_model, tmp_path):
    lines = []
    for i, g in enumerate(GOOD):
        lines.append(g)
        if i < len(HOSTILE):
            lines.append(HOSTILE[i][0])
    lines += [h for h, _ in HOSTILE[len(GOOD):]]
    inp = _write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    s = run_jsonl(edge_model, inp, out, BatchOptions(batch_size=3), progress=False)
    assert s.rows == len(GOOD) + len(HOSTILE) and s.failed == len(HOSTILE)
    raw = out.read_bytes()
    raw.decode("utf-8")  # strict: no lone surrogate was written
    recs = [json.loads(x, parse_constant=lambda c: pytest.fail(f"bare {c} in the output"))
            for x in raw.splitlines()]
    assert [r["id"] for r in recs if "error" not in r] == [g["id"] for g in GOOD]
    errors = [r for r in recs if "error" in r]
    for rec, (_, frag) in zip(errors, HOSTILE, strict=True):
        assert frag in rec["error"], rec["error"]
        assert rec["error"].startswith(f"line {rec['line']}:")
    by_frag = {frag: rec for rec, (_, frag) in zip(errors, HOSTILE, strict=True)}
    assert by_frag["field 'id' is not valid Unicode"]["id"] is None  # the bad id is not echoed
    assert by_frag["field 'input' is not valid Unicode"]["id"] == "ok"  # a good id is


def test_a_record_that_cannot_be_written_becomes_an_error_record(edge_model, tmp_path, monkeypatch):
    """Progress saving never crashes: a result that is not strict JSON is that row's error."""
    import alter_edge.runtime.batch as batch

    real = batch.run_batch_rows

    def poisoned(model, rows, opts):
        recs = real(model, rows, opts)
        recs[0]["output"] = "\udc80"
        recs[-1]["probability"] = float("nan")
        return recs

    monkeypatch.setattr(batch, "run_batch_rows", poisoned)
    inp = _write(tmp_path / "in.jsonl", GOOD)
    out = tmp_path / "out.jsonl"
    run_jsonl(edge_model, inp, out, BatchOptions(batch_size=4), progress=False)
    recs = _records(out)
    assert len(recs) == len(GOOD)
    bad = [r for r in recs if "error" in r]
    assert bad and all("cannot be written as JSON" in r["error"] for r in bad)


def test_resume_on_a_fresh_job_then_kill_then_resume(edge_model, tmp_path):
    """--resume with no partial file starts one with its header; a kill after that resumes."""
    inp = _write(tmp_path / "in.jsonl", GOOD)
    opts = BatchOptions(batch_size=2)
    full = tmp_path / "full.jsonl"
    run_jsonl(edge_model, inp, full, opts, progress=False)
    out = tmp_path / "out.jsonl"

    def stop(b):
        if b == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_jsonl(edge_model, inp, out, opts, resume=True, progress=False, on_batch=stop)
    lines = (tmp_path / "out.jsonl.partial").read_text().splitlines()
    head = json.loads(lines[0])
    assert head["alter_edge_partial"] >= 2 and "input_sha256" in head
    s = run_jsonl(edge_model, inp, out, opts, resume=True, progress=False)
    assert s.resumed == len(lines) - 1 > 0
    assert out.read_bytes() == full.read_bytes()


def _interrupted(edge_model, inp, out, opts):
    with pytest.raises(KeyboardInterrupt):
        run_jsonl(edge_model, inp, out, opts, progress=False,
                  on_batch=lambda b: (_ for _ in ()).throw(KeyboardInterrupt()))


def test_resume_refusal_names_the_setting(edge_model, tmp_path):
    inp = _write(tmp_path / "in.jsonl", GOOD)
    out = tmp_path / "out.jsonl"
    _interrupted(edge_model, inp, out, BatchOptions(batch_size=2))
    with pytest.raises(DataError, match=r"batch_size 2 there, 3 now") as e:
        run_jsonl(edge_model, inp, out, BatchOptions(batch_size=3), resume=True, progress=False)
    assert "--" not in str(e.value)  # a library error names no command-line flag
    budget = edge_model.bundle.max_new_tokens
    with pytest.raises(DataError, match=rf"max_new_tokens {budget} there, 5 now"):
        run_jsonl(edge_model, inp, out, BatchOptions(batch_size=2, max_new_tokens=5), resume=True,
                  progress=False)
    _write(inp, GOOD[:-1])
    with pytest.raises(DataError, match=r"the input file changed"):
        run_jsonl(edge_model, inp, out, BatchOptions(batch_size=2), resume=True, progress=False)


def test_a_setting_equal_to_its_default_is_no_difference(edge_model, runtime_bundle, tmp_path):
    """max_new_tokens equal to the bundle's, precision equal to the default one, a default task
    no row falls back on, truncate with no over-long row: the run resumes."""
    from alter_edge.runtime import EdgeModel

    inp = _write(tmp_path / "in.jsonl", GOOD)
    out = tmp_path / "out.jsonl"
    _interrupted(edge_model, inp, out, BatchOptions(batch_size=2))
    same = BatchOptions(batch_size=2, max_new_tokens=edge_model.bundle.max_new_tokens, task="echo",
                        truncate=True)
    explicit = EdgeModel.load(runtime_bundle, threads=1, precision=edge_model.default_precision)
    s = run_jsonl(explicit, inp, out, same, resume=True, progress=False)
    assert s.resumed == 2


def test_partial_without_header_is_refused_clearly(tmp_path):
    p = tmp_path / "o.jsonl.partial"
    p.write_text('{"id": 1, "line": 1}\n')
    with pytest.raises(DataError, match="no header line"):
        PartialFile(p, {"x": 1}).load()


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "partial"])
def test_output_that_is_the_input_is_refused(runtime_bundle, tmp_path, how):
    inp = _write(tmp_path / "in.jsonl", GOOD[:2])
    before = inp.read_bytes()
    out = {"same": inp, "symlink": tmp_path / "link.jsonl", "hardlink": tmp_path / "hard.jsonl",
           "partial": tmp_path / "x.jsonl"}[how]
    if how == "symlink":
        out.symlink_to(inp)
    elif how == "hardlink":
        os.link(inp, out)
    elif how == "partial":
        os.link(inp, tmp_path / "x.jsonl.partial")
    with pytest.raises(OutputError, match="is the input file"):
        check_paths(inp, out)
    r = CliRunner().invoke(main, ["run", str(runtime_bundle), "--input", str(inp), "--output", str(out),
                                  "--quiet"])
    assert r.exit_code == 1 and "is the input file" in r.output and "Traceback" not in r.output
    assert inp.read_bytes() == before


def test_unwritable_output_is_one_line_before_the_model_loads(runtime_bundle, tmp_path, monkeypatch):
    import alter_edge.runtime.model as model_mod

    inp = _write(tmp_path / "in.jsonl", GOOD[:2])
    loads = []
    monkeypatch.setattr(model_mod.EdgeModel, "load", classmethod(lambda cls, *a, **k: loads.append(1)))
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:  # root writes through permissions: fake the refusal instead
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    else:
        import tempfile

        def refuse(*a, dir=None, **k):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    r = CliRunner().invoke(main, ["run", str(runtime_bundle), "--input", str(inp), "--output",
                                  str(ro / "out.jsonl"), "--quiet"])
    assert r.exit_code == 1, r.output
    assert f"cannot write the output in {ro}: Permission denied" in r.output
    assert "Traceback" not in r.output and not loads
    monkeypatch.undo()
    with pytest.raises(OutputError, match="is a folder"):
        check_paths(inp, tmp_path)


def test_disk_full_mid_run_is_one_line_and_progress_is_kept(edge_model, tmp_path, monkeypatch):
    inp = _write(tmp_path / "in.jsonl", GOOD)
    out = tmp_path / "out.jsonl"
    calls = []
    real = PartialFile.append

    def append(self, records):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, records)

    monkeypatch.setattr(PartialFile, "append", append)
    with pytest.raises(OutputError, match=r"cannot save progress in .*out.jsonl.partial: No space left"):
        run_jsonl(edge_model, inp, out, BatchOptions(batch_size=2), progress=False)
    monkeypatch.undo()
    s = run_jsonl(edge_model, inp, out, BatchOptions(batch_size=2), resume=True, progress=False)
    assert s.resumed == 2 and len(_records(out)) == len(GOOD)


def test_output_files_follow_the_umask(edge_model, tmp_path):
    inp = _write(tmp_path / "in.jsonl", GOOD[:2])
    old = os.umask(0o022)
    try:
        run_jsonl(edge_model, inp, tmp_path / "a.jsonl", progress=False)
        os.umask(0o077)
        run_jsonl(edge_model, inp, tmp_path / "b.jsonl", progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.jsonl").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.jsonl").stat().st_mode) == 0o600


@pytest.fixture(scope="module")
def short_bundle(runtime_bundle, tmp_path_factory):
    """The test bundle with max_prompt_tokens 64: a cut prompt plus new tokens stays inside the
    tiny model's 256 positions (the manifest is not hashed, so editing it is allowed)."""
    import shutil

    b = tmp_path_factory.mktemp("short") / "bundle"
    shutil.copytree(runtime_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["generation"]["max_prompt_tokens"] = 64
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def test_empty_and_long_input_agree_between_texts_and_the_batch_job(short_bundle, tmp_path):
    """`run --task echo ""` and a batch row with empty input both refuse it; an over-long input is
    an error on both paths, and with --truncate both cut it and say so."""
    from alter_edge.runtime import EdgeModel

    runtime_bundle, edge_model = short_bundle, EdgeModel.load(short_bundle, threads=1)
    runner = CliRunner()
    r = runner.invoke(main, ["run", str(runtime_bundle), "--task", "echo", "--threads", "1", ""])
    assert r.exit_code == 1 and "input is empty" in r.output
    long = " ".join(["cat"] * 5000)
    r = runner.invoke(main, ["run", str(runtime_bundle), "--task", "echo", "--threads", "1", long])
    limit = edge_model.bundle.max_prompt_tokens
    assert r.exit_code == 1 and f"over the bundle's max_prompt_tokens {limit}" in r.output
    r = runner.invoke(main, ["run", str(runtime_bundle), "--task", "echo", "--threads", "1",
                             "--max-new-tokens", "2", "--truncate", "--json", long])
    assert r.exit_code == 0, r.output
    inp = _write(tmp_path / "in.jsonl", [{"task": "echo", "input": ""}, {"task": "echo", "input": long}])
    s = run_jsonl(edge_model, inp, tmp_path / "o.jsonl", progress=False)
    recs = _records(tmp_path / "o.jsonl")
    assert s.failed == 2 and "'input' is empty" in recs[0]["error"]
    assert f"over the bundle's max_prompt_tokens {limit}" in recs[1]["error"]
    run_jsonl(edge_model, inp, tmp_path / "t.jsonl", BatchOptions(truncate=True, max_new_tokens=2), progress=False)
    recs = _records(tmp_path / "t.jsonl")
    assert "error" in recs[0] and recs[1]["truncated"] is True
    assert edge_model.generate(long, task="echo", max_new_tokens=2, truncate=True).truncated
    assert not edge_model.generate("repeat cat", task="echo", max_new_tokens=2).truncated


def test_unknown_default_task_fails_the_job_not_every_row(edge_model, tmp_path):
    inp = _write(tmp_path / "in.jsonl", [{"input": "x"}])
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        run_jsonl(edge_model, inp, tmp_path / "o.jsonl", BatchOptions(task="nope"), progress=False)


# -- output locations that are not regular files -----------------------------------------------
def test_an_output_that_is_a_device_or_a_pipe_is_refused_never_replaced(runtime_bundle, edge_model, tmp_path):
    inp = _write(tmp_path / "in.jsonl", GOOD[:2])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    to_fifo = tmp_path / "to-fifo.jsonl"
    to_fifo.symlink_to(fifo)
    for out, kind in ((os.devnull, "a character device"), (fifo, "a pipe"), (to_fifo, "a pipe")):
        r = CliRunner().invoke(main, ["run", str(runtime_bundle), "--input", str(inp), "--output", str(out),
                                      "--quiet"])
        assert r.exit_code == 1 and f"output {out} is {kind}" in r.output, r.output
        with pytest.raises(OutputError, match=f"is {kind}"):
            run_jsonl(edge_model, inp, out, progress=False)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode) and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert to_fifo.is_symlink()
    # /dev/stdout of a process whose stdout is a pipe (a symlink to /proc/self/fd/1)
    import subprocess
    import sys

    code = "from alter_edge.runtime.batch import check_paths; import sys; check_paths(sys.argv[1], '/dev/stdout')"
    r = subprocess.run([sys.executable, "-c", code, str(inp)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "OutputError: output /dev/stdout is a pipe" in r.stderr, r.stderr


def test_an_output_symlink_to_a_file_is_written_through(edge_model, tmp_path):
    inp = _write(tmp_path / "in.jsonl", GOOD[:3])
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "out.jsonl"
    target.write_text("old\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    run_jsonl(edge_model, inp, link, BatchOptions(batch_size=2), progress=False)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert [r["id"] for r in _records(target)] == [g["id"] for g in GOOD[:3]]
    assert not list(tmp_path.glob("*.partial")) and not list(target.parent.glob("*.partial"))
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "nowhere" / "x.jsonl")
    with pytest.raises(OutputError, match="is a symlink to a missing file"):
        check_paths(inp, dangling)


# -- resume, rows that do not fit, null fields ---------------------------------------------------
def test_resume_with_another_bundle_of_the_same_checkpoint_is_refused(runtime_bundle, edge_model, tmp_path):
    """The partial file names the bundle by its manifest's sha256, not the checkpoint's."""
    import shutil

    from alter_edge.runtime import EdgeModel

    twin = tmp_path / "twin"
    shutil.copytree(runtime_bundle, twin)
    m = json.loads((twin / "manifest.json").read_text())
    m["generation"]["max_prompt_tokens"] = 200  # another export of the same checkpoint
    (twin / "manifest.json").write_text(json.dumps(m))
    other = EdgeModel.load(twin, threads=1)
    assert other.bundle.manifest.checkpoint_sha256 == edge_model.bundle.manifest.checkpoint_sha256
    inp = _write(tmp_path / "in.jsonl", GOOD)
    out = tmp_path / "out.jsonl"
    _interrupted(edge_model, inp, out, BatchOptions(batch_size=2))
    with pytest.raises(DataError, match=r"belongs to a different run \(another bundle \(its manifest.json differs\)\)"):
        run_jsonl(other, inp, out, BatchOptions(batch_size=2), resume=True, progress=False)
    s = run_jsonl(edge_model, inp, out, BatchOptions(batch_size=2), resume=True, progress=False)
    assert s.resumed == 2


def test_a_row_too_long_for_the_positions_is_an_error_row(runtime_bundle, tmp_path):
    """With a large max_new_tokens, one row that cannot fit the graphs' positions is its own
    error record; it used to end the whole job."""
    import shutil

    from alter_edge.runtime import EdgeModel

    b = tmp_path / "b"
    shutil.copytree(runtime_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["kv_cache"]["max_sequence_length"], m["generation"]["max_prompt_tokens"] = 64, 48
    (b / "manifest.json").write_text(json.dumps(m))
    model = EdgeModel.load(b, threads=1)
    long = "repeat"
    while len(model.prompt_ids(long, "echo")[0]) <= 40:
        long += " cat"
    rows = [*GOOD[:4], {"id": "long", "task": "echo", "input": long}, *GOOD[4:]]
    inp = _write(tmp_path / "in.jsonl", rows)
    s = run_jsonl(model, inp, tmp_path / "out.jsonl", BatchOptions(batch_size=3, max_new_tokens=24), progress=False)
    recs = _records(tmp_path / "out.jsonl")
    assert s.failed == 1 and s.ok == len(GOOD)
    bad = recs[4]
    assert bad["id"] == "long" and bad["error"].startswith("line 5: its prompt of ")
    assert "plus 24 new tokens exceed the 64 positions the bundle's graphs cover" in bad["error"]
    r = CliRunner().invoke(main, ["run", str(b), "--input", str(inp), "--output", str(tmp_path / "cli.jsonl"),
                                  "--batch-size", "3", "--max-new-tokens", "24", "--quiet"])
    assert r.exit_code == 3 and "ask for fewer --max-new-tokens" in r.output, r.output


def test_a_kv_cache_too_big_for_memory_is_one_error(edge_model):
    from alter_edge.errors import ConfigError

    runner = edge_model.runner_for(["echo"])
    with pytest.raises(ConfigError, match=r"a KV cache of 1000000000 rows x 2048 positions .* cannot be allocated"):
        runner.new_cache(10**9, 2048)


def test_null_fields_are_absent_as_in_a_parquet_row(edge_model, tmp_path):
    """JSONL and Parquet agree: "task": null takes the default task, "input": null is missing."""
    inp = _write(tmp_path / "in.jsonl", [{"id": "n", "task": None, "input": "swap cat dog"},
                                         {"id": None, "task": "echo", "input": "repeat cat"},
                                         {"id": "m", "task": "echo", "input": None}])
    s = run_jsonl(edge_model, inp, tmp_path / "o.jsonl", BatchOptions(task="echo", max_new_tokens=3), progress=False)
    recs = _records(tmp_path / "o.jsonl")
    assert s.failed == 1
    assert recs[0]["task"] == "echo" and "output" in recs[0] and recs[1]["id"] is None
    assert "missing field(s) input" in recs[2]["error"] and recs[2]["id"] == "m"



def _tampered(edge_model, tmp_path, extra: list[str]):
    """A job of GOOD interrupted after two batches of 2, its partial file with ``extra`` lines
    appended (``{line}``, ``{id}``, ``{task}``: those of a row not saved yet); (input, output,
    partial, the partial's bytes before the resume)."""
    inp = _write(tmp_path / "in.jsonl", GOOD)
    out = tmp_path / "out.jsonl"
    stop = lambda b: (_ for _ in ()).throw(KeyboardInterrupt()) if b == 1 else None  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        run_jsonl(edge_model, inp, out, BatchOptions(batch_size=2), progress=False, on_batch=stop)
    partial = tmp_path / "out.jsonl.partial"
    saved = {json.loads(x)["line"] for x in partial.read_bytes().splitlines()[1:]}
    line = min(set(range(1, len(GOOD) + 1)) - saved)
    row = GOOD[line - 1]
    with open(partial, "ab") as f:
        f.write("".join(x.replace("{line}", str(line)).replace("{id}", row["id"]).replace("{task}", row["task"])
                        + "\n" for x in extra).encode())
    return inp, out, partial, partial.read_bytes()


@pytest.mark.parametrize("extra, words", [
    (['{"id": "{id}", "line": 99999999, "task": "{task}", "output": "INJECTED"}'], "line 99999999"),
    (['{"id": "{id}", "line": {line}, "task": "{task}", "output": "x"}',
      '{"id": "{id}", "line": {line}, "task": "{task}", "output": "INJECTED"}'], "a second record for line"),
    (['{"id": "{id}", "line": 0, "task": "{task}", "output": "x"}'], "line 0"),
    (['{"id": "{id}", "line": true, "task": "{task}", "output": "x"}'], "no line number"),
    (['{"id": "{id}", "line": {line}.0, "task": "{task}", "output": "x"}'], "no line number"),
    (['["line", 1]'], "not a record"),
    (["garbage", '{"id": "{id}", "line": {line}, "task": "{task}", "output": "x"}'], "not a record"),
    (['{"id": "other", "line": {line}, "task": "{task}", "output": "x"}'], "whose id 'other' is not the input's"),
    (['{"id": "{id}", "line": {line}, "task": "nope", "output": "x"}'], "whose task 'nope' is not the input's"),
    (['{"id": "{id}", "line": {line}, "task": "{task}", "output": 5}'], "output"),
])
def test_a_tampered_partial_file_is_refused_on_resume(edge_model, tmp_path, extra, words):
    """Issue 36 item 7: an injected record for line 99999999 and a second record for line 1
    gave 48,001 rows for 48,000 inputs and replaced line 1. A record must be for a line that
    holds a good row of this input, once, with that row's id and task; anything else refuses
    the resume with one line naming the partial file's line, and leaves every file as it was."""
    inp, out, partial, before = _tampered(edge_model, tmp_path, extra)
    with pytest.raises(DataError) as e:
        run_jsonl(edge_model, inp, out, BatchOptions(batch_size=2), resume=True, progress=False)
    msg = str(e.value)
    assert words in msg and str(partial) in msg and "delete it to start over" in msg, msg
    assert "\n" not in msg and len(msg) < 400
    assert partial.read_bytes() == before and not out.exists()


def test_a_partial_file_is_tied_to_the_input_and_the_bundle(edge_model, tmp_path):
    from alter_edge.io import sha256_file

    inp, out, partial, before = _tampered(edge_model, tmp_path, [])
    head = json.loads(before.split(b"\n")[0])
    assert head["input_sha256"] == sha256_file(inp) and head["bundle"] == edge_model.bundle.manifest_sha256
    s = run_jsonl(edge_model, inp, out, BatchOptions(batch_size=2), resume=True, progress=False)
    recs = _records(out)
    assert s.resumed == before.count(b"\n") - 1 > 0 and s.rows == len(recs) == len(GOOD)
    assert [r["line"] for r in recs] == list(range(1, len(GOOD) + 1))
