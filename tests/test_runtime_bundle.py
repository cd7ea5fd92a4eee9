"""Bundle checks: a broken bundle fails at load with one clear line naming the problem."""

from __future__ import annotations

import json
import shutil

import pytest

from alter_edge.errors import BundleError, ConfigError
from alter_edge.runtime import EdgeModel, load_bundle


@pytest.fixture()
def bundle_copy(runtime_bundle, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, b)
    return b


def _edit_manifest(b, fn):
    m = json.loads((b / "manifest.json").read_text())
    fn(m)
    (b / "manifest.json").write_text(json.dumps(m))


def test_good_bundle_loads(runtime_bundle):
    b = load_bundle(runtime_bundle)
    assert b.kv.num_layers == 4 and b.has_multi_task_graph
    assert b.graph_for("echo").path == "task-echo.fp32.onnx"
    assert b.graph_for("colour").path == "model.fp32.onnx"


def test_not_a_directory(tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        EdgeModel.load(tmp_path / "nothing")


@pytest.mark.parametrize("name", ["tokenizer.json", "tasks.json", "task-echo.fp32.onnx", "manifest.json"])
def test_missing_file_is_named(bundle_copy, name):
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        EdgeModel.load(bundle_copy)


@pytest.mark.parametrize("name", ["tokenizer.json", "tasks.json", "model.fp32.onnx"])
def test_tampered_file_is_named(bundle_copy, name):
    with open(bundle_copy / name, "ab") as f:
        f.write(b" ")
    with pytest.raises(BundleError, match=f"file {name}.*does not match manifest"):
        EdgeModel.load(bundle_copy)


def test_tampered_graph_is_caught_when_first_opened(bundle_copy):
    """Graphs are hashed when opened: at load for the default graph, the graphs of ``tasks=``
    (or all with preload); a default load never opens a per-task graph."""
    name = "task-echo.fp32.onnx"
    with open(bundle_copy / name, "ab") as f:
        f.write(b" ")
    m = EdgeModel.load(bundle_copy, threads=1)
    m.generate("is red a colour", task="colour", max_new_tokens=2)  # the multi-task graph is fine
    m.generate("repeat cat dog", task="echo", max_new_tokens=2)  # served by the multi-task graph too
    with pytest.raises(BundleError, match=f"file {name}.*does not match manifest"):
        EdgeModel.load(bundle_copy, tasks=["echo"])
    with pytest.raises(BundleError, match=f"file {name}.*does not match manifest"):
        EdgeModel.load(bundle_copy, preload=True)
    with pytest.raises(BundleError, match="onnxruntime cannot load this graph"):  # no hash check
        EdgeModel.load(bundle_copy, verify=False, preload=True)


def test_wrong_format_version(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format_version 99 is not supported; this runtime reads 2"):
        EdgeModel.load(bundle_copy)


def test_wrong_format(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(format="something-else"))
    with pytest.raises(BundleError, match="expected 'alter-edge-bundle'"):
        EdgeModel.load(bundle_copy)


def test_tokenizer_that_does_not_belong(bundle_copy):
    """A tokenizer with more tokens than the graph has logits is refused."""
    from tokenizers import Tokenizer

    from alter_edge.io import sha256_file

    tok = Tokenizer.from_file(str(bundle_copy / "tokenizer.json"))
    tok.add_tokens([f"extra{i}" for i in range(50)])
    tok.save(str(bundle_copy / "tokenizer.json"))
    _edit_manifest(bundle_copy, lambda m: m["files"].update({"tokenizer.json": sha256_file(bundle_copy / "tokenizer.json")}))
    with pytest.raises(BundleError, match="tokenizer.json has 84 tokens but model.fp32.onnx has 34 logits"):
        EdgeModel.load(bundle_copy)


def test_graph_for_unknown_task(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["graphs"][1].update(task="ghost"))
    with pytest.raises(BundleError, match="task 'ghost', which tasks.json lacks"):
        load_bundle(bundle_copy, verify=False)


def test_unknown_provider_lists_available(runtime_bundle):
    import onnxruntime as ort

    with pytest.raises(ConfigError, match="available: .*CPUExecutionProvider") as e:
        EdgeModel.load(runtime_bundle, providers=["NoSuchExecutionProvider"])
    assert "NoSuchExecutionProvider" in str(e.value)
    assert "CPUExecutionProvider" in ort.get_available_providers()


def test_bad_session_options(runtime_bundle):
    with pytest.raises(ConfigError, match="graph optimization 'max' is not one of"):
        EdgeModel.load(runtime_bundle, optimization="max")
    m = EdgeModel.load(runtime_bundle, optimization="disable", threads=1, preload=True)
    assert len(m._runners) == 2


def test_unlisted_file_is_refused(bundle_copy):
    (bundle_copy / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="file extra.bin is not listed in manifest.json"):
        EdgeModel.load(bundle_copy)


def test_ort_format_twin(bundle_copy, edge_model):
    """A graph's .ort twin (listed in `files`) loads with ort_format=True and answers the same."""
    import onnxruntime as ort

    from alter_edge.io import sha256_file

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(bundle_copy / "model.ort")
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(bundle_copy / "model.fp32.onnx"), so, providers=["CPUExecutionProvider"])

    def add_twin(m):
        m["graphs"][0]["ort"] = "model.ort"
        m["files"]["model.ort"] = sha256_file(bundle_copy / "model.ort")

    assert json.loads((bundle_copy / "manifest.json").read_text())["graphs"][0]["path"] == "model.fp32.onnx"
    _edit_manifest(bundle_copy, add_twin)
    m = EdgeModel.load(bundle_copy, threads=1, ort_format=True)
    assert m.runner_for(["colour"]).path.name == "model.ort"
    texts = ["is red a colour", "repeat cat dog"]
    assert [g.token_ids for g in m.generate(texts, tasks=["colour", "parity"], max_new_tokens=6)] == \
        [g.token_ids for g in edge_model.generate(texts, tasks=["colour", "parity"], max_new_tokens=6)]
    with pytest.raises(BundleError, match="has no .ort twin"):
        EdgeModel.load(bundle_copy, threads=1, ort_format=True, tasks=["echo"])  # the per-task graph has none


def test_load_only_the_graphs_of_some_tasks(runtime_bundle):
    m = EdgeModel.load(runtime_bundle, threads=1, tasks=["echo"])
    assert list(m._runners) == ["task-echo.fp32.onnx"]
    m = EdgeModel.load(runtime_bundle, threads=1, tasks=["colour", "parity"])
    assert list(m._runners) == ["model.fp32.onnx"]


def test_changed_weight_file_is_refused_though_hashed_beside_the_session(bundle_copy):
    """The weight file hashes in a thread while onnxruntime builds the session; a mismatch
    still fails the load (the session is dropped), naming the file, and a flip that onnxruntime
    cannot notice (same size, other bytes) is what only the hash catches."""
    w = bundle_copy / "weights.fp32.bin"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="file weights.fp32.bin does not match manifest"):
        EdgeModel.load(bundle_copy, threads=1)
    m = EdgeModel.load(bundle_copy, threads=1, verify=False)  # onnxruntime itself loads it fine
    assert m.generate("repeat cat dog", task="echo", max_new_tokens=2).finish_reason in ("eos", "length")
