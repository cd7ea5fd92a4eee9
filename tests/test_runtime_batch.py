"""The JSONL batch job: error records for bad rows, input order, --resume, the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from alter_edge.cli import main
from alter_edge.errors import DataError
from alter_edge.runtime.batch import BatchOptions, run_jsonl
from alter_edge.testing import TINY_ROWS

GOOD = [{"id": f"r{i}", "task": r["task"], "input": r["input"]} for i, r in enumerate(TINY_ROWS[:20])]


def _write(path, lines):
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else json.dumps(ln).encode()) + b"\n"
                              for ln in lines))
    return path


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _bad_lines(limit: int):
    """(line content, expected error fragment): each kind of bad row."""
    return [
        (b"{not json", "not valid JSON"),
        ({"id": "b1", "task": "echo"}, "missing field(s) input"),
        ({"id": "b2", "task": "nope", "input": "x"}, "unknown task 'nope'"),
        ({"id": "b3", "task": "echo", "input": " ".join(["x"] * limit)}, f"over the bundle's max_prompt_tokens {limit}"),
        ({"id": "b4", "input": "repeat cat dog"}, "no task"),
        ({"id": "b5", "task": "echo", "input": ""}, "field 'input' is empty"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
    ]


def test_bad_rows_become_error_records_and_good_rows_survive(edge_model, tmp_path):
    bad = _bad_lines(edge_model.bundle.max_prompt_tokens)
    lines = []
    for i, g in enumerate(GOOD):  # interleave: good, bad, good, bad, ...
        lines.append(g)
        if i < len(bad):
            lines.append(bad[i][0])
    lines.insert(3, b"   ")  # a blank line is not a row
    inp = _write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    s = run_jsonl(edge_model, inp, out, BatchOptions(batch_size=4), progress=False)
    recs = _records(out)
    assert s.rows == len(GOOD) + len(bad) and s.failed == len(bad) and s.ok == len(GOOD)
    assert [r["line"] for r in recs] == sorted(r["line"] for r in recs)  # input order
    good = [r for r in recs if "error" not in r]
    assert [r["id"] for r in good] == [g["id"] for g in GOOD]
    errors = [r for r in recs if "error" in r]
    assert len(errors) == len(bad)
    for rec, (_, frag) in zip(errors, bad, strict=True):
        assert frag in rec["error"]
        assert rec["error"].startswith(f"line {rec['line']}:")
    assert errors[2]["id"] == "b2"
    # classify tasks answer with a label of their set; generate tasks with text
    kinds = {r["task"]: edge_model.tasks.get(r["task"]).kind for r in good}
    assert set(kinds.values()) == {"classify", "generate"}
    for r in good:
        spec = edge_model.tasks.get(r["task"])
        assert r["output"] in spec.labels if spec.kind == "classify" else isinstance(r["output"], str)
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_batch_results_equal_the_api(edge_model, tmp_path):
    inp = _write(tmp_path / "in.jsonl", GOOD)
    run_jsonl(edge_model, inp, tmp_path / "o.jsonl", BatchOptions(batch_size=3, generate_labels=True,
                                                                  max_new_tokens=6), progress=False)
    recs = _records(tmp_path / "o.jsonl")
    for g, r in zip(GOOD, recs, strict=True):
        assert r["output"] == edge_model.generate(g["input"], task=g["task"], max_new_tokens=6).text


def test_default_task_and_truncate(edge_model, tmp_path):
    long = " ".join(["x"] * edge_model.bundle.max_prompt_tokens)
    inp = _write(tmp_path / "in.jsonl", [{"input": "repeat cat dog"}, {"input": long}])
    s = run_jsonl(edge_model, inp, tmp_path / "o.jsonl", BatchOptions(task="echo", truncate=True),
                  progress=False)
    assert s.failed == 0
    assert [r["task"] for r in _records(tmp_path / "o.jsonl")] == ["echo", "echo"]


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_same_file(edge_model, tmp_path):
    lines = [*GOOD[:7], b"oops", *GOOD[7:]]
    inp = _write(tmp_path / "in.jsonl", lines)
    opts = BatchOptions(batch_size=3)
    run_jsonl(edge_model, inp, tmp_path / "full.jsonl", opts, progress=False)

    out = tmp_path / "out.jsonl"

    def stop_after_two(b: int) -> None:
        if b == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_jsonl(edge_model, inp, out, opts, progress=False, on_batch=stop_after_two)
    partial = tmp_path / "out.jsonl.partial"
    assert not out.exists() and partial.is_file()
    assert len(partial.read_text().splitlines()) == 1 + 6  # header + two batches
    with open(partial, "ab") as f:  # a kill in the middle of writing a record
        f.write(b'{"id": "r9", "line": 1')
    s = run_jsonl(edge_model, inp, out, opts, resume=True, progress=False)
    assert s.resumed == 6
    assert out.read_bytes() == (tmp_path / "full.jsonl").read_bytes()
    assert not partial.exists()


def test_resume_refuses_a_partial_file_of_another_input(edge_model, tmp_path):
    inp = _write(tmp_path / "in.jsonl", GOOD[:4])
    out = tmp_path / "out.jsonl"
    with pytest.raises(_Interrupt):
        run_jsonl(edge_model, inp, out, BatchOptions(batch_size=2), progress=False,
                  on_batch=lambda b: (_ for _ in ()).throw(_Interrupt()))
    _write(inp, GOOD[:5])
    with pytest.raises(DataError, match="belongs to a different run"):
        run_jsonl(edge_model, inp, out, BatchOptions(batch_size=2), resume=True, progress=False)


def test_cli_batch_exit_status_and_resume(runtime_bundle, tmp_path):
    inp = _write(tmp_path / "in.jsonl", [*GOOD[:5], b"nope"])
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(main, ["run", str(runtime_bundle), "--input", str(inp), "--output", str(out),
                                  "--batch-size", "2", "--threads", "1", "--quiet"])
    assert r.exit_code == 3, r.output
    assert "6 rows (0 resumed), 1 failed" in r.output
    assert len(_records(out)) == 6
    ok = _write(tmp_path / "ok.jsonl", GOOD[:5])
    r = CliRunner().invoke(main, ["run", str(runtime_bundle), "--input", str(ok), "--output", str(out),
                                  "--quiet", "--resume"])
    assert r.exit_code == 0, r.output
    assert [x["id"] for x in _records(out)] == [g["id"] for g in GOOD[:5]]


def test_cli_usage_errors(runtime_bundle, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["run", str(runtime_bundle), "--input", str(_write(tmp_path / "i.jsonl", GOOD[:1]))])
    assert r.exit_code == 2 and "--input needs --output" in r.output
    r = runner.invoke(main, ["run", str(runtime_bundle), "some text"])
    assert r.exit_code == 2 and "--task is required" in r.output
    r = runner.invoke(main, ["run", str(runtime_bundle), "--task", "nope", "x"])
    assert r.exit_code == 1 and "unknown task 'nope'; known tasks: colour, echo, parity" in r.output


def test_resume_after_sigkill(runtime_bundle, tmp_path):
    """A real kill (SIGKILL) of `alter-edge run`, then --resume: same bytes as one clean run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    rows = [{"id": i, "task": "echo", "input": f"repeat {a} {b}"}
            for i, (a, b) in enumerate((a, b) for a in ("cat", "dog", "sun", "moon") for b in ("red", "fish", "tree"))]
    inp = _write(tmp_path / "in.jsonl", rows * 20)  # 240 rows
    args = [str(runtime_bundle), "--input", str(inp), "--batch-size", "1", "--generate",
            "--max-new-tokens", "8", "--threads", "1", "--quiet"]
    cli = [sys.executable, "-c", "from alter_edge.cli import main; main()", "run"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    full = tmp_path / "full.jsonl"
    subprocess.run([*cli, *args, "--output", str(full)], check=True, env=env, timeout=300)
    out, partial = tmp_path / "out.jsonl", tmp_path / "out.jsonl.partial"
    proc = subprocess.Popen([*cli, *args, "--output", str(out)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.is_file() and partial.read_bytes().count(b"\n") > 20:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    done = partial.read_bytes().count(b"\n") - 1
    assert 0 < done < len(rows) * 20
    subprocess.run([*cli, *args, "--output", str(out), "--resume"], check=True, env=env, timeout=300)
    assert out.read_bytes() == full.read_bytes()
    assert not partial.exists()
