"""Property-based fuzzing (hypothesis) of the two places hostile input enters: the batch job's
line parser and the bundle manifest loader. Each must answer with its own error type (one line),
never another exception, and what it accepts must be safe to use (ids writable as strict JSON,
paths inside the bundle).

ALTER_EDGE_FUZZ_EXAMPLES sets the examples per test (default 200; docs/runtime.md gives the
count of the last long run).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from alter_edge.errors import BundleError  # noqa: E402
from alter_edge.runtime.batch import RowError, jsonl, parse_row, read_rows  # noqa: E402
from alter_edge.runtime.bundle import load_bundle  # noqa: E402
from alter_edge.runtime.manifest import validate_manifest  # noqa: E402

EXAMPLES = int(os.environ.get("ALTER_EDGE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=10_000, derandomize=False,  # ms: a hang fails, not stalls
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TASKS = ("colour", "echo", "parity")

# text with lone surrogates and every other code point hypothesis can draw
any_text = st.text(st.characters(codec=None, exclude_categories=()) | st.characters(categories=["Cs"]),
                   max_size=30)
huge_ints = st.integers(4250, 6000).map(lambda n: (10**n - 1) // 9 * 7)  # around Python's 4,300-digit limit
scalars = (st.none() | st.booleans() | st.integers() | huge_ints
           | st.floats(allow_nan=True, allow_infinity=True) | any_text | st.sampled_from(TASKS))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(any_text | st.sampled_from(["id", "task", "input"]), kids, max_size=4),
                           max_leaves=12)


def _encode(value) -> bytes:
    """A Python value as a JSON line the way a careless writer makes one: NaN/Infinity bare,
    big ints in full, surrogates as \\u escapes."""
    import sys

    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()
    finally:
        sys.set_int_max_str_digits(old)


rows = st.fixed_dictionaries({}, optional={"id": json_values, "task": json_values | st.sampled_from(TASKS),
                                           "input": json_values | any_text}).map(_encode)
deep = st.integers(1, 300_000).map(lambda n: b"[" * n) | st.integers(1, 50_000).map(lambda n: b'{"a":' * n)


@st.composite
def mangled(draw):
    """A good row, then cut, spliced with random bytes, or with a byte flipped."""
    raw = bytearray(draw(rows))
    how = draw(st.sampled_from(["cut", "splice", "flip", "none"]))
    if how == "cut" and raw:
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif how == "splice":
        at = draw(st.integers(0, len(raw)))
        raw[at:at] = draw(st.binary(max_size=8))
    elif how == "flip" and raw:
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


lines = rows | mangled() | deep | st.binary(max_size=64)


@FUZZ
@given(raw=lines, default=st.none() | st.sampled_from(TASKS))
def test_parse_row_answers_with_a_row_or_a_row_error(raw, default):
    try:
        row = parse_row(raw, 7, default, TASKS)
    except RowError as e:
        msg = str(e)
        assert msg.startswith("line 7: ") and "\n" not in msg
        rec = {"id": e.row_id, "line": 7, "error": msg}
    else:
        assert row.task in TASKS and isinstance(row.input, str) and row.input.strip()
        rec = {"id": row.id, "line": 7, "task": row.task, "output": "x"}
    out = jsonl([rec])  # what the job writes: strict JSON, valid UTF-8, the same record back
    out.decode("utf-8")
    back = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert back == rec


@pytest.fixture(scope="module")
def fuzz_dir():
    d = Path(tempfile.mkdtemp(prefix="alter-edge-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@settings(FUZZ, max_examples=max(10, EXAMPLES // 5))
@given(batch=st.lists(lines, min_size=1, max_size=6))
def test_read_rows_keeps_every_line(edge_model, fuzz_dir, batch):
    """A whole file of hostile lines: every non-blank line is one good row or one error record."""
    from alter_edge.runtime.batch import BatchOptions

    body = [ln.replace(b"\n", b" ").replace(b"\r", b" ") for ln in batch]
    path = fuzz_dir / "in.jsonl"
    path.write_bytes(b"\n".join(body) + b"\n")
    good, errors = read_rows(edge_model, path, BatchOptions(task="echo"))
    expected = [i for i, ln in enumerate(body, start=1) if ln.strip()]
    assert sorted([r.line for r in good] + list(errors)) == expected
    jsonl(errors.values()).decode("utf-8")


GOOD_MANIFEST = {
    "format": "alter-edge-bundle", "format_version": 1, "eos_token_id": 2, "pad_token_id": 0,
    "kv_cache": {"num_layers": 1, "num_kv_heads": 1, "head_dim": 4, "max_sequence_length": 16},
    "generation": {"max_new_tokens": 4, "max_prompt_tokens": 8},
    "graphs": [{"path": "model.onnx", "task": None, "precision": "fp32", "sha256": "a" * 64,
                "inputs": ["input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value"]}],
    "files": {"tasks.json": "b" * 64, "tokenizer.json": "c" * 64},
}
path_like = st.sampled_from(["/etc/passwd", "../x", "a/../../b", "./m", "", "C:/w", "a\\b", "a//b", "\x00",
                             "model.onnx", "tasks/echo/model.onnx", "weights/base.int8.bin"]) | any_text


def _paths(m):
    """Every (where, value) of the manifest that is a path."""
    keys = []
    for i, g in enumerate(m["graphs"]):
        keys.append((("graphs", i, "path"), g["path"]))
        if g.get("ort") is not None:
            keys.append((("graphs", i, "ort"), g["ort"]))
    return keys + [(("files", k), k) for k in m["files"]]


def _mutate(draw, m, ops: tuple[str, ...]) -> None:
    """1-3 times: walk to a random container of ``m``, then apply one of ``ops`` to one entry:
    replace, delete, path (a path-like string) or addkey (a path-like key, dicts only)."""
    for _ in range(draw(st.integers(1, 3))):
        node = m
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            k = draw(st.sampled_from(keys))
            if isinstance(node[k], (dict, list)) and draw(st.booleans()):
                node = node[k]
                continue
            what = draw(st.sampled_from(ops))
            if what == "replace":
                node[k] = draw(json_values)
            elif what == "delete":
                del node[k]
            elif what == "path":
                node[k] = draw(path_like)
            elif isinstance(node, dict):
                node[draw(path_like)] = draw(st.sampled_from(["d" * 64, None, 1]))
            break


@st.composite
def mutated_manifests(draw):
    m = json.loads(json.dumps(GOOD_MANIFEST))
    _mutate(draw, m, ("replace", "delete", "path", "addkey"))
    return m


@FUZZ
@given(m=mutated_manifests())
def test_validate_manifest_refuses_or_accepts_only_confined_paths(fuzz_dir, m):
    root = fuzz_dir / "b"
    root.mkdir(exist_ok=True)
    try:
        validate_manifest(m, root)
    except BundleError as e:
        assert "\n" not in str(e)
        return
    for _, rel in _paths(m):
        assert not rel.startswith("/") and ".." not in rel.split("/")
        assert (root / rel).resolve().is_relative_to(root.resolve())


@pytest.fixture(scope="module")
def fuzz_bundle(runtime_bundle, fuzz_dir):
    b = fuzz_dir / "bundle"
    shutil.copytree(runtime_bundle, b)
    return b


@st.composite
def bundle_manifests(draw, base: dict):
    """The real bundle's manifest, mutated like mutated_manifests, as bytes (or raw bytes)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64) | deep)
    m = json.loads(json.dumps(base))
    _mutate(draw, m, ("replace", "delete", "path"))
    return _encode(m)


@pytest.fixture(scope="module")
def base_manifest(fuzz_bundle):
    return json.loads((fuzz_bundle / "manifest.json").read_text())


@settings(FUZZ, max_examples=max(10, EXAMPLES // 2))
@given(data=st.data())
def test_load_bundle_fuzz(fuzz_bundle, base_manifest, data):
    """The real loader on the test bundle with a mutated manifest.json (or raw bytes)."""
    raw = data.draw(bundle_manifests(base_manifest))
    (fuzz_bundle / "manifest.json").write_bytes(raw)
    try:
        b = load_bundle(fuzz_bundle)
    except BundleError as e:
        assert "\n" not in str(e)
        return
    for g in b.graphs:
        assert (fuzz_bundle / g.path).resolve().is_relative_to(fuzz_bundle.resolve())
