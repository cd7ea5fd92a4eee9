"""The Ray Data batch job: the local job's bytes on a local 2-CPU cluster, Parquet input, the
bundle shipped through the object store, and an actor killed mid-run."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from alter_edge.runtime.batch import BatchOptions, run_jsonl
from alter_edge.testing import TINY_ROWS

ray = pytest.importorskip("ray", reason="the Ray job needs the [ray] extra (pip install -e '.[ray]')")
pytest.importorskip("ray.data", reason="the Ray job needs Ray Data (the [ray] extra)")

import alter_edge.runtime.ray as ray_job  # noqa: E402
from alter_edge.runtime.ray import RayOptions, predict, run_file  # noqa: E402

pytestmark = pytest.mark.ray

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


def test_a_killed_actor_loses_and_duplicates_no_row(cluster, runtime_bundle, job, tmp_path, monkeypatch):
    inp, opts, local = job
    token = tmp_path / "crash-token"
    token.write_text("")

    class CrashOnce(ray_job._Predictor):
        """The actor that claims the token file exits at its second batch (one actor, once)."""

        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 2:
                try:
                    os.rename(token, f"{token}.taken")
                except OSError:
                    pass
                else:
                    os._exit(1)
            return super().__call__(batch)

    monkeypatch.setattr(ray_job, "_Predictor", CrashOnce)
    out = tmp_path / "ray.jsonl"
    run_file(runtime_bundle, inp, out, opts, RayOptions(actors=2, blocks_per_actor=4), progress=False)
    assert not token.exists() and (tmp_path / "crash-token.taken").exists()  # an actor did die
    lines = [json.loads(x)["line"] for x in out.read_text().splitlines()]
    assert len(lines) == len(set(lines))
    assert out.read_bytes() == local.read_bytes()


def test_truncated_and_bad_rows_are_the_local_jobs_bytes(cluster, runtime_bundle, edge_model, tmp_path):
    """--truncate: the over-long row keeps "truncated": true on Ray (the actors got every field
    of the planned row), and the bad rows are the same error records."""
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"\n".join(_lines(edge_model)) + b"\n")
    opts = BatchOptions(task="echo", batch_size=3, max_new_tokens=3, truncate=True)
    run_jsonl(edge_model, inp, tmp_path / "local.jsonl", opts, progress=False)
    s = run_file(runtime_bundle, inp, tmp_path / "ray.jsonl", opts, RayOptions(actors=2), progress=False)
    local = (tmp_path / "local.jsonl").read_bytes()
    assert (tmp_path / "ray.jsonl").read_bytes() == local
    recs = [json.loads(x) for x in local.splitlines()]
    assert [r["id"] for r in recs if r.get("truncated")] == ["b3"]
    assert s.failed == 5 == sum("error" in r for r in recs)


def _twin_bundle(runtime_bundle, tmp_path):
    """A second bundle of the same checkpoint whose manifest differs (another export)."""
    twin = tmp_path / "twin"
    shutil.copytree(runtime_bundle, twin)
    m = json.loads((twin / "manifest.json").read_text())
    m["generation"]["max_new_tokens"] = 7
    (twin / "manifest.json").write_text(json.dumps(m))
    return twin


def test_object_store_copy_is_keyed_by_the_manifest_in_a_private_folder(runtime_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    twin = _twin_bundle(runtime_bundle, tmp_path)
    (k1, blob1), (k2, blob2) = ray_job._pack_bundle(runtime_bundle), ray_job._pack_bundle(twin)
    assert k1 != k2  # same checkpoint_sha256, different manifests
    p1, p2 = ray_job._unpack_bundle(k1, lambda: blob1), ray_job._unpack_bundle(k2, lambda: blob2)
    assert p1 != p2
    assert json.loads((p2 / "manifest.json").read_text())["generation"]["max_new_tokens"] == 7
    assert ray_job._unpack_bundle(k1, lambda: pytest.fail("unpacked twice")) == p1  # once per node
    cache = tmp_path / "tmp" / f"alter-edge-ray-{os.getuid()}"
    assert p1.parent.parent == cache and stat.S_IMODE(cache.stat().st_mode) == 0o700


@pytest.mark.parametrize("plant", ["world-writable", "symlink"])
def test_object_store_copy_never_uses_a_planted_folder(runtime_bundle, tmp_path, monkeypatch, plant):
    """A folder someone placed in a shared temp directory (writable by others, or a symlink to
    their folder), even holding a copy under the right key, is not used."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    key, blob = ray_job._pack_bundle(runtime_bundle)
    theirs = tmp_path / "theirs"
    shutil.copytree(runtime_bundle, theirs / key / "bundle")
    theirs.chmod(0o777)
    planted = tmp_path / "tmp" / f"alter-edge-ray-{os.getuid()}"
    if plant == "symlink":
        theirs.chmod(0o700)
        planted.symlink_to(theirs)
    else:
        os.replace(theirs, planted)
        theirs = planted
    got = ray_job._unpack_bundle(key, lambda: blob)
    assert not got.resolve().is_relative_to(theirs.resolve())
    assert (got / "manifest.json").read_bytes() == (runtime_bundle / "manifest.json").read_bytes()


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
