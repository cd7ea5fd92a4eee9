"""Hostile manifests: schema errors are one line each, paths stay inside the bundle, and
`inspect` (export.bundle.verify_bundle) refuses every bundle the runtime cannot load."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from alter_edge.errors import BundleError
from alter_edge.export.bundle import verify_bundle
from alter_edge.io import sha256_file
from alter_edge.runtime import EdgeModel, load_bundle
from alter_edge.runtime.manifest import confine, validate_manifest


@pytest.fixture()
def bundle_copy(runtime_bundle, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, b)
    return b


def _edit(b, fn):
    m = json.loads((b / "manifest.json").read_text())
    fn(m)
    (b / "manifest.json").write_text(json.dumps(m))


def _refused_everywhere(b, match):
    """The runtime's load and `inspect` both refuse, with one line matching ``match``."""
    for load in (lambda: EdgeModel.load(b, threads=1), lambda: verify_bundle(b)):
        with pytest.raises(BundleError, match=match) as e:
            load()
        assert "\n" not in str(e.value)


def _graph(m, task=None):
    return next(g for g in m["graphs"] if g.get("task") == task)


def _set(path, value):
    def fn(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return fn


# -- wrong types and values ------------------------------------------------------------------
@pytest.mark.parametrize("edit, match", [
    (_set(["graphs"], None), r"graphs must be a list, got null"),
    (_set(["graphs"], []), r"graphs must not be empty"),
    (_set(["files"], "x"), r"files must be an object, got a string 'x'"),
    (_set(["eos_token_id"], "two"), r"eos_token_id must be an integer, got a string 'two'"),
    (_set(["eos_token_id"], True), r"eos_token_id must be an integer, got true/false"),
    (_set(["pad_token_id"], -1), r"pad_token_id must be >= 0, got -1"),
    (_set(["generation"], []), r"generation must be an object, got a list"),
    (_set(["generation", "max_prompt_tokens"], 0), r"generation.max_prompt_tokens must be in 1..1048576, got 0"),
    (_set(["generation", "max_new_tokens"], 2.5), r"generation.max_new_tokens must be an integer, got a number"),
    (_set(["kv_cache", "past_key"], "past_key_values.key"), r"kv_cache.past_key must contain \{i\}"),
    (_set(["kv_cache", "present_value"], "present.{i}.{j}"), r"kv_cache.present_value may hold only the field"),
    (_set(["kv_cache", "num_layers"], "4"), r"kv_cache.num_layers must be an integer"),
    (_set(["kv_cache", "num_layers"], 10**12), r"kv_cache.num_layers must be in 1..1024, got 1000000000000"),
    (_set(["kv_cache", "head_dim"], 0), r"kv_cache.head_dim must be in 1..8192, got 0"),
    (_set(["generation", "max_new_tokens"], 10**9), r"generation.max_new_tokens must be in 1..1048576"),
    (_set(["kv_cache"], None), r"kv_cache must be an object"),
    (lambda m: m["graphs"].__setitem__(0, "model.onnx"), r"graphs\[0\] must be an object"),
    (lambda m: m["graphs"][0].pop("sha256"), r"lacks the field 'graphs\[0\]\.sha256'"),
    (lambda m: m["graphs"][0].__setitem__("sha256", 5), r"graphs\[0\].sha256 must be a string"),
    (lambda m: m["graphs"][0].__setitem__("precision", "int3"), r"graphs\[0\].precision must be one of fp32, int8, int4"),
    (lambda m: m["graphs"][0].__setitem__("task", 3), r"graphs\[0\].task must be a string or null"),
    (lambda m: m["graphs"][0].__setitem__("inputs", "input_ids"), r"graphs\[0\].inputs must be a list"),
    (lambda m: m["files"].__setitem__("tasks.json", None), r"files\['tasks.json'\] must be a string"),
    (lambda m: m["files"].__setitem__("tasks.json", "abc"), r"files\['tasks.json'\] must be a sha256"),
    (lambda m: m.pop("kv_cache"), r"lacks the field 'kv_cache'"),
])
def test_wrong_field_is_one_line(bundle_copy, edit, match):
    _edit(bundle_copy, edit)
    _refused_everywhere(bundle_copy, match)


def test_manifest_not_an_object(bundle_copy):
    (bundle_copy / "manifest.json").write_text("[1, 2]")
    _refused_everywhere(bundle_copy, "must be a JSON object")


def test_num_layers_not_matching_the_graph(bundle_copy):
    """The manifest lists no graph inputs: the graph itself is checked when opened."""
    n = load_bundle(bundle_copy).kv.num_layers
    _edit(bundle_copy, _set(["kv_cache", "num_layers"], n - 1))
    load_bundle(bundle_copy)  # the manifest alone looks fine
    _refused_everywhere(bundle_copy, rf"graph takes input\(s\) past_key_values.{n - 1}.key.*num_layers {n - 1}")
    _edit(bundle_copy, _set(["kv_cache", "num_layers"], n + 1))
    _refused_everywhere(bundle_copy, rf"graph lacks input/output\(s\) past_key_values.{n}.key")


def test_listed_inputs_are_checked_against_num_layers(bundle_copy):
    """A manifest that lists a graph's inputs is checked at load, before any graph opens."""
    n = load_bundle(bundle_copy).kv.num_layers
    names = ["input_ids", "attention_mask", "task_ids",
             *(f"past_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value"))]

    def fn(m, layers):
        m["kv_cache"]["num_layers"] = layers
        _graph(m)["inputs"] = names
    _edit(bundle_copy, lambda m: fn(m, n - 1))
    with pytest.raises(BundleError, match=rf"inputs: has past_key_values.{n - 1}.key: the graph has {n} layers, "
                                          rf"kv_cache.num_layers says {n - 1}"):
        load_bundle(bundle_copy)
    _edit(bundle_copy, lambda m: fn(m, n + 1))
    with pytest.raises(BundleError, match=rf"inputs: lacks past_key_values.{n}.key"):
        load_bundle(bundle_copy)


def test_bad_prompt_template_in_tasks_json(bundle_copy):
    tasks = json.loads((bundle_copy / "tasks.json").read_text())
    tasks["tasks"][0]["prompt_template"] = "{input} {0}"
    (bundle_copy / "tasks.json").write_text(json.dumps(tasks))
    _edit(bundle_copy, lambda m: m["files"].__setitem__("tasks.json", sha256_file(bundle_copy / "tasks.json")))
    _refused_everywhere(bundle_copy, r"prompt_template '\{input\} \{0\}' may hold only the field \{input\}")


def test_eos_outside_the_vocabulary_fails_inspect_too(bundle_copy):
    _edit(bundle_copy, _set(["eos_token_id"], 10**6))
    _refused_everywhere(bundle_copy, r"eos_token_id 1000000 is outside the vocabulary")


def test_unknown_optional_fields_are_allowed(bundle_copy):
    """A newer exporter may add optional fields (format v2); the schema does not refuse them."""
    def fn(m):
        m["something_new"] = {"x": 1}
        m["graphs"][0]["future_field"] = None
    _edit(bundle_copy, fn)
    assert verify_bundle(bundle_copy)["something_new"] == {"x": 1}


# -- paths stay inside the bundle ----------------------------------------------------------------
@pytest.fixture()
def no_hashing(monkeypatch):
    """Record every file the loader hashes: a refused path must not be opened."""
    import alter_edge.runtime.bundle as rb

    opened = []
    real = rb.sha256_file
    monkeypatch.setattr(rb, "sha256_file", lambda p, *a: opened.append(str(p)) or real(p, *a))
    return opened


@pytest.mark.parametrize("path, why", [
    ("/etc/passwd", "is absolute"),
    ("../../../../../etc/passwd", r"has an empty, '\.' or '\.\.' part"),
    ("tasks/../../x.onnx", r"has an empty, '\.' or '\.\.' part"),
    ("./model.onnx", r"has an empty, '\.' or '\.\.' part"),
    ("tasks//model.onnx", r"has an empty, '\.' or '\.\.' part"),
    ("C:/x/model.onnx", "is absolute"),
    ("tasks\\echo\\model.onnx", "backslash"),
    ("", "is not a path"),
])
def test_graph_path_outside_is_refused_before_it_is_opened(bundle_copy, no_hashing, path, why):
    _edit(bundle_copy, lambda m: _graph(m).__setitem__("path", path))
    _refused_everywhere(bundle_copy, rf"graphs\[\d\]\.path .* {why}; a bundle may only name files inside")
    assert not any("passwd" in p for p in no_hashing)


def test_absolute_path_to_another_bundles_real_graph_is_refused(bundle_copy, runtime_bundle):
    other = (runtime_bundle / load_bundle(runtime_bundle).graph_for(None).path).resolve()
    _edit(bundle_copy, lambda m: _graph(m).__setitem__("path", str(other)))
    _refused_everywhere(bundle_copy, r"graphs\[\d\]\.path .* is absolute")


def test_files_entry_outside_with_the_right_hash_is_refused(bundle_copy, tmp_path, no_hashing):
    secret = tmp_path / "hostname"
    secret.write_text("secret-host\n")
    rel = os.path.relpath(secret, bundle_copy)
    assert rel.startswith("..")
    _edit(bundle_copy, lambda m: m["files"].__setitem__(rel, sha256_file(secret)))
    _refused_everywhere(bundle_copy, rf"files entry '{rel}'.*'\.\.' part")
    assert str(secret) not in no_hashing and not any(p.endswith("hostname") for p in no_hashing)


def test_ort_entry_outside_is_refused(bundle_copy):
    _edit(bundle_copy, lambda m: _graph(m).__setitem__("ort", "/etc/passwd"))
    _refused_everywhere(bundle_copy, r"graphs\[\d\]\.ort '/etc/passwd' is absolute")


def test_symlink_leading_out_is_refused(bundle_copy, tmp_path, no_hashing):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (bundle_copy / "extra.json").symlink_to(outside)
    _edit(bundle_copy, lambda m: m["files"].__setitem__("extra.json", sha256_file(outside)))
    _refused_everywhere(bundle_copy, r"files entry 'extra.json' .* leads outside the bundle")
    assert not any(p.endswith("extra.json") for p in no_hashing)


def test_manifest_symlink_leading_out_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "manifest.json"
    shutil.move(bundle_copy / "manifest.json", outside)
    (bundle_copy / "manifest.json").symlink_to(outside)
    _refused_everywhere(bundle_copy, r"manifest.json itself 'manifest.json' leads outside the bundle")


def test_symlinked_folder_leading_out_is_refused(bundle_copy, tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    name = load_bundle(bundle_copy).graph_for("echo").path
    shutil.move(bundle_copy / name, real / name)
    (bundle_copy / "sub").symlink_to(real)
    _edit(bundle_copy, lambda m: _graph(m, "echo").__setitem__("path", f"sub/{name}"))
    _refused_everywhere(bundle_copy, rf"graphs\[\d\]\.path 'sub/{name}' leads outside")


def test_external_data_outside_or_unlisted_is_refused(bundle_copy):
    _edit(bundle_copy, lambda m: _graph(m).__setitem__("external_data", ["../weights.fp32.bin"]))
    _refused_everywhere(bundle_copy, r"graphs\[\d\]\.external_data\[0\] '\.\./weights\.fp32\.bin' has")
    _edit(bundle_copy, lambda m: _graph(m).__setitem__("external_data", ["other.bin"]))
    _refused_everywhere(bundle_copy, r"graphs\[0\]\.external_data\[0\] 'other.bin' .* is not listed in files")


def test_symlink_inside_the_bundle_is_fine(tmp_path):
    root = tmp_path / "b"
    (root / "w").mkdir(parents=True)
    (root / "w" / "a.bin").write_bytes(b"x")
    (root / "link.bin").symlink_to(root / "w" / "a.bin")
    assert confine(root, "link.bin", "files entry") == root / "link.bin"
    assert confine(root, "weights/base.int8.bin", "files entry") == root / "weights/base.int8.bin"


def test_validator_refuses_paths_in_any_marked_field(tmp_path):
    """A future field marked ``path=True`` is confined like ``external_data`` is."""
    from alter_edge.runtime.manifest import GRAPH, MANIFEST, Field

    schema = {**MANIFEST, "graphs": Field((list,), required=True, items=Field((dict,), fields={
        **GRAPH, "adapter_files": Field((list,), items=Field((str,), path=True))}))}
    m = json.loads(json.dumps({
        "format": "alter-edge-bundle", "format_version": 1, "eos_token_id": 0, "pad_token_id": 0,
        "kv_cache": {"num_layers": 1, "num_kv_heads": 1, "head_dim": 1, "max_sequence_length": 512},
        "graphs": [{"path": "model.onnx", "sha256": "0" * 64, "adapter_files": ["../w.bin"]}],
        "files": {"tasks.json": "0" * 64, "tokenizer.json": "0" * 64}}))
    with pytest.raises(BundleError, match=r"graphs\[0\]\.adapter_files\[0\] '\.\./w\.bin'"):
        validate_manifest(m, tmp_path, schema)
    m["graphs"][0]["adapter_files"] = ["weights/base.int8.bin"]
    validate_manifest(m, tmp_path, schema)


# -- bundles `inspect` passed that `run` could not serve -------------------------------------
def _add_task(b, also_in_manifest: bool):
    tasks = json.loads((b / "tasks.json").read_text())
    tasks["tasks"].append({**tasks["tasks"][-1], "name": "extra", "id": len(tasks["tasks"])})
    (b / "tasks.json").write_text(json.dumps(tasks))

    def fn(m):
        m["files"]["tasks.json"] = sha256_file(b / "tasks.json")
        if also_in_manifest:
            m["tasks"].append("extra")
    _edit(b, fn)


def test_tasks_json_with_an_extra_task_is_refused(bundle_copy):
    """The graphs' task table has 3 rows; task id 3 was an onnxruntime Gather error mid-job."""
    _add_task(bundle_copy, also_in_manifest=False)
    _refused_everywhere(bundle_copy, r"tasks.json has tasks colour, echo, parity, extra \(ids 0..3\) but the graphs "
                                     r"were exported for colour, echo, parity")


def test_an_extra_task_in_both_files_is_found_by_running_its_id(bundle_copy):
    _add_task(bundle_copy, also_in_manifest=True)
    load_bundle(bundle_copy)  # the files agree with each other: the graph itself tells
    _refused_everywhere(bundle_copy, r"model.fp32.onnx: the graph cannot run task ids 0..3 of tasks.json")


def test_num_kv_heads_or_head_dim_not_matching_the_graph(bundle_copy):
    kv = load_bundle(bundle_copy).kv
    _edit(bundle_copy, _set(["kv_cache", "num_kv_heads"], kv.num_kv_heads + 1))
    _refused_everywhere(bundle_copy, rf"input past_key_values.0.key has {kv.num_kv_heads} at axis 1 but "
                                     rf"manifest.json's kv_cache.num_kv_heads is {kv.num_kv_heads + 1}")
    _edit(bundle_copy, _set(["kv_cache", "num_kv_heads"], kv.num_kv_heads))
    _edit(bundle_copy, _set(["kv_cache", "head_dim"], 2 * kv.head_dim))
    _refused_everywhere(bundle_copy, rf"kv_cache.head_dim is {2 * kv.head_dim}")


@pytest.mark.parametrize("edit, match", [
    (_set(["kv_cache", "max_sequence_length"], -1), r"kv_cache.max_sequence_length must be in 2..1048576, got -1"),
    (_set(["kv_cache", "max_sequence_length"], 0), r"kv_cache.max_sequence_length must be in 2..1048576, got 0"),
    (lambda m: m["kv_cache"].pop("max_sequence_length"), r"lacks the field 'kv_cache.max_sequence_length'"),
    (_set(["kv_cache", "max_sequence_length"], 100), r"generation.max_prompt_tokens 256 leaves no room for a new "
                                                       r"token in kv_cache.max_sequence_length 100"),
])
def test_max_sequence_length_is_checked(bundle_copy, edit, match):
    """-1 refused every request; absent, a huge max_new_tokens ran out of memory."""
    _edit(bundle_copy, edit)
    _refused_everywhere(bundle_copy, match)


def test_inspect_reads_a_graph_entry_without_precision(bundle_copy):
    """precision is optional (fp32, as the runtime reads it); inspect crashed with a KeyError."""
    from click.testing import CliRunner

    from alter_edge.cli import main

    _edit(bundle_copy, lambda m: [g.pop("precision") for g in m["graphs"]])
    r = CliRunner().invoke(main, ["inspect", str(bundle_copy)])
    assert r.exit_code == 0, r.output
    assert "fp32" in r.output and "hashes: ok" in r.output


def test_verify_bundle_is_public_and_refuses_a_tampered_graph(bundle_copy):
    """What an app runs before handing a bundle to onnxruntime-genai, which checks no hash."""
    from alter_edge.runtime import verify_bundle as public

    assert public is verify_bundle  # inspect's check is the runtime's own
    assert public(bundle_copy)["format"] == "alter-edge-bundle"
    g = bundle_copy / "task-echo.fp32.onnx"
    g.write_bytes(g.read_bytes()[:-1] + bytes([g.read_bytes()[-1] ^ 1]))
    with pytest.raises(BundleError, match="file task-echo.fp32.onnx does not match manifest.json"):
        public(bundle_copy)
