"""The Ray Data batch job: the local job's bytes on a local 2-CPU cluster, Parquet input, the
bundle shipped through the object store, and an actor killed mid-run."""

from __future__ import annotations

import json

import pytest

from alter_edge.runtime.batch import BatchOptions, run_jsonl
from alter_edge.testing import TINY_ROWS

ray = pytest.importorskip("ray", reason="the Ray job needs the [ray] extra (pip install -e '.[ray]')")
pytest.importorskip("ray.data", reason="the Ray job needs Ray Data (the [ray] extra)")

from alter_edge.runtime.ray import RayOptions, predict, run_file  # noqa: E402

GOOD = [{"id": f"r{i}", "task": r["task"], "input": r["input"]} for i, r in enumerate(TINY_ROWS[:30])]


def _lines(edge_model) -> list[bytes]:
    """Mixed tasks, every kind of bad row, a blank line, a row taking the default task."""
    limit = edge_model.bundle.max_prompt_tokens
    bad = [b"{not json", json.dumps({"id": "b1", "task": "echo"}).encode(),
           json.dumps({"id": "b2", "task": "nope", "input": "x"}).encode(),
           json.dumps({"id": "b3", "task": "echo", "input": " ".join(["x"] * limit)}).encode(),
           b"\xff\xfe", b"[1, 2]", b"   "]
    out = []
    for i, g in enumerate(GOOD):
        out.append(json.dumps(g).encode())
        if i % 4 == 1 and bad:
            out.append(bad.pop())
    out.append(json.dumps({"id": 7, "input": "swap cat dog"}).encode())  # default task
    return out


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture()
def job(edge_model, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"\n".join(_lines(edge_model)) + b"\n")
    opts = BatchOptions(task="echo", batch_size=3, max_new_tokens=5)
    local = tmp_path / "local.jsonl"
    s = run_jsonl(edge_model, inp, local, opts, progress=False)
    assert s.failed == 6 and s.ok == len(GOOD) + 1
    return inp, opts, local


def test_output_is_byte_identical_to_the_local_job(cluster, runtime_bundle, job, tmp_path):
    inp, opts, local = job
    out = tmp_path / "ray.jsonl"
    s = run_file(runtime_bundle, inp, out, opts, RayOptions(actors=2, threads_per_actor=1), progress=False)
    assert out.read_bytes() == local.read_bytes()
    assert (s.rows, s.failed) == (len(GOOD) + 7, 6)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r.get("task") for r in recs} >= {"echo", "parity", "colour"}


def test_parquet_through_ray_readers_and_the_object_store(cluster, runtime_bundle, edge_model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [*GOOD[:10], {"id": "b1", "task": "nope", "input": "x"}, {"id": "b2", "task": None, "input": "swap a b"},
            {"id": "b3", "task": "echo", "input": None}, *GOOD[10:14]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    # the same rows as JSONL (a null column is an absent field), run by the local job
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    opts = BatchOptions(task="echo", batch_size=4, max_new_tokens=4)
    run_jsonl(edge_model, jsonl, tmp_path / "local.jsonl", opts, progress=False)
    ropts = RayOptions(actors=2, bundle_transport="object_store")
    run_file(runtime_bundle, tmp_path / "in.parquet", tmp_path / "ray.jsonl", opts, ropts, progress=False)
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    # predict() on a Dataset: records in input order, as JSON text
    ds = predict(ray.data.read_parquet(str(tmp_path / "in.parquet")), runtime_bundle, opts, ropts)
    got = [r["record"] + "\n" for r in ds.take_all()]
    assert "".join(got) == (tmp_path / "local.jsonl").read_text()
    assert "unknown task 'nope'" in got[10] and "missing field(s) input" in got[12]


def test_a_killed_actor_loses_and_duplicates_no_row(cluster, runtime_bundle, job, tmp_path):
    inp, opts, local = job
    token = tmp_path / "crash-token"
    token.write_text("")
    out = tmp_path / "ray.jsonl"
    ropts = RayOptions(actors=2, blocks_per_actor=4, crash_once=str(token))
    run_file(runtime_bundle, inp, out, opts, ropts, progress=False)
    assert not token.exists() and (tmp_path / "crash-token.taken").exists()  # an actor did die
    lines = [json.loads(x)["line"] for x in out.read_text().splitlines()]
    assert len(lines) == len(set(lines))
    assert out.read_bytes() == local.read_bytes()


def test_cli_ray_flag_writes_the_local_jobs_file(cluster, runtime_bundle, job, tmp_path):
    from click.testing import CliRunner

    from alter_edge.cli import main

    inp, opts, local = job
    out = tmp_path / "cli.jsonl"
    args = ["run", str(runtime_bundle), "--input", str(inp), "--output", str(out), "--task", "echo",
            "--batch-size", "3", "--max-new-tokens", "5", "--quiet", "--ray", "--actors", "2"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 3, r.output  # some rows are error records, as in the local job
    assert out.read_bytes() == local.read_bytes()
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 2 and "--resume is for the local job" in r.output
