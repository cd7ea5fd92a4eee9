"""Property-based fuzzing (hypothesis) of the two places hostile input enters: the batch job's
line parser and the bundle manifest loader. Each must answer with its own error type (one line),
never another exception, and what it accepts must be safe to use (ids writable as strict JSON,
paths inside the bundle).

ALTER_EDGE_FUZZ_EXAMPLES sets the examples per test (default 200; docs/runtime.md gives the
count of the last long run).

Below those, the seeded hostile-input campaign of issue 36 (``test_campaign_*``): batch jobs,
resumes from tampered progress files, training lines, manifests and bundle entries, a running
server and generation arguments; ALTER_EDGE_FUZZ_CAMPAIGN sets its size (CI: CAMPAIGN_SLICE).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
import time
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


# == the campaign (issue 36) ====================================================================
# Seeded hostile inputs of five kinds, from the cases the probe found: batch lines (and
# tampered progress files), training data lines, manifests (fields and entries), server bodies
# and generation parameters. ALTER_EDGE_FUZZ_CAMPAIGN is the number of inputs in all (CI's
# slice: CAMPAIGN_SLICE); the full campaign is
#   ALTER_EDGE_FUZZ_CAMPAIGN=12000 ALTER_EDGE_FUZZ_REPORT=campaign.json \
#       .venv/bin/python -m pytest -q tests/test_fuzz.py -k campaign
# (docs/runtime.md). Each kind asserts: no traceback (no exception but the library's own error
# types, no error logged), one error line naming the field, rows in = rows out for batch jobs,
# nothing written outside the output folder (a sandbox listed before and after), and a server
# that still answers /health. The tally of every kind is printed, and written to
# ALTER_EDGE_FUZZ_REPORT when set.
CAMPAIGN_SLICE = 1200
CAMPAIGN = int(os.environ.get("ALTER_EDGE_FUZZ_CAMPAIGN", str(CAMPAIGN_SLICE)))
CAMPAIGN_SEED = int(os.environ.get("ALTER_EDGE_FUZZ_SEED", "36"))
SHARES = {"batch": 0.40, "train": 0.20, "manifest": 0.15, "server": 0.15, "params": 0.10}
TALLY: dict[str, dict[str, int]] = {}


def _share(kind: str) -> int:
    return max(20, round(CAMPAIGN * SHARES[kind]))


def _rng(kind: str):
    import random

    return random.Random(f"{CAMPAIGN_SEED}:{kind}")


@pytest.fixture(scope="module", autouse=True)
def campaign_report():
    yield
    if not TALLY:
        return
    total = {k: sum(t.get(k, 0) for t in TALLY.values())
             for k in ("inputs", "tracebacks", "lost_rows", "injected_rows", "files_outside", "unnamed", "failures")}
    report = {"seed": CAMPAIGN_SEED, "campaign": CAMPAIGN, "total": total, "kinds": TALLY}
    print("\nfuzz campaign:", json.dumps(report, sort_keys=True))
    out = os.environ.get("ALTER_EDGE_FUZZ_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


class _Tally:
    """Counts of one kind; ``fail`` keeps the first few failures for the assertion message."""

    def __init__(self, kind: str):
        self.kind = kind
        self.c = TALLY.setdefault(kind, {})
        self.examples: list[str] = []

    def add(self, key: str, n: int = 1) -> None:
        self.c[key] = self.c.get(key, 0) + n

    def fail(self, key: str, what: str) -> None:
        self.add(key)
        self.add("failures")
        if len(self.examples) < 8:
            self.examples.append(f"{key}: {what[:300]}")

    def check(self) -> None:
        assert not self.c.get("failures"), f"{self.kind}: {self.c}; e.g. " + " | ".join(self.examples)


class _ErrorLog(logging.Handler):
    """Every log record at ERROR or with a traceback, while the campaign runs in-process."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture()
def error_log():
    h = _ErrorLog()
    root = logging.getLogger()
    root.addHandler(h)
    try:
        yield h
    finally:
        root.removeHandler(h)


def _bad_line(msg: str) -> bool:
    """Not one printable line: a line break, a bidi override that reorders it, or text that
    cannot be written as UTF-8 (a lone surrogate)."""
    if any(c in msg for c in "\n\r\u202e\u202d\u2066\u2067\u2068"):
        return True
    try:
        msg.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _listing(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and mtime (a sandbox's state)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()  # a folder by its mode alone: its mtime moves with what it holds
            out[str(p.relative_to(root))] = (st.st_mode,) if stat.S_ISDIR(st.st_mode) else (
                st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _changed_outside(before: dict, after: dict, allowed: tuple[str, ...]) -> list[str]:
    changed = [p for p in set(before) | set(after) if before.get(p) != after.get(p)]
    return sorted(p for p in changed if not any(p == a or p.startswith(a + "/") for a in allowed))


# JSON fragments a hostile writer puts in a field: wrong types, NaN, numbers past float and
# past Python's digit limit, lone surrogates, control and bidi characters, paths, deep nesting
HOSTILE_FRAGMENTS = [
    "null", "true", "false", "0", "-1", "1.5", "2.0", "-0", "1e308", "-1e308", "1e400", "1e-320",
    str(2**63), str(2**64), "9" * 4000, "[]", "{}", "[1, 2]", '{"a": 1}', "[" * 30 + "]" * 30,
    '""', '"   "', '"\\u0000"', '"\\n"', '"a\\nb"', '"\\u202eevil"', '"\\ud800"', '"x\\udc80"',
    '"../../../etc/passwd"', '"/etc/passwd"', '"a\\\\b"', '"C:/w"', '"' + "x" * 65 + '"', '".hidden"',
    '"echo"', '"colour"', '"parity"', '"\\u00e9t\\u00e9"', '"\\ud83d\\ude00"', '"a' + "b" * 3000 + '"',
]
STRUCTURAL = ["NaN", "Infinity", "-Infinity", "7" * 5000, "[" * 3000 + "]" * 3000,
              '{"a":' * 3000 + "1" + "}" * 3000]  # the line is not strict JSON: no field to name
INPUTS = ["swap cat dog", "count x x", "is red a colour", "is fish a colour", "swap sun moon"]
GOOD_TASK = {"swap cat dog": "echo", "count x x": "parity", "is red a colour": "colour",
             "is fish a colour": "colour", "swap sun moon": "echo"}


def _row_text(fields: dict[str, str]) -> bytes:
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode("utf-8", "surrogatepass")


def _mangle(rng, raw: bytes) -> bytes:
    raw = bytearray(raw)
    how = rng.choice(["cut", "splice", "flip"])
    if how == "cut":
        return bytes(raw[:rng.randrange(len(raw))])
    at = rng.randrange(len(raw) + 1)
    if how == "splice":
        raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    else:
        raw[min(at, len(raw) - 1)] = rng.randrange(256)
    return bytes(raw)


RAW_LINES = [b"[" * 200_000, b'{"a":' * 50_000, b"\xff\xfe\x00", b"\x00" * 10, b"{}", b"[]", b'"text"', b"1",
             b"\xef\xbb\xbf" + b'{"task": "echo", "input": "swap cat dog"}', b'{"input": "x", "input": 5}',
             b"null", b"{" * 10, b"\x1b[31m", b"\xed\xa0\x80", b'{"task": "echo", "input": "\xc3"}']


def batch_line(rng, fields=("id", "task", "input")) -> tuple[bytes, str | None, bool]:
    """(a JSONL line, the field an error must name or None, whether the line is good)."""
    text = rng.choice(INPUTS)
    row = {"id": json.dumps(f"r{rng.randrange(10**6)}"), "task": json.dumps(GOOD_TASK[text]),
           "input": json.dumps(text)}
    if "target" in fields:
        row["target"] = json.dumps(rng.choice(["yes", "no", "odd", "even", "dog cat"]))
        del row["id"]
    r = rng.random()
    if r < 0.2:
        return _row_text(row), None, True
    if r < 0.65:
        field = rng.choice(fields)
        if rng.random() < 0.1:
            del row[field]
            return _row_text(row), field, False
        frag = rng.choice(HOSTILE_FRAGMENTS)
        row[field] = frag
        return _row_text(row), field, False
    if r < 0.75:
        row[rng.choice(fields)] = rng.choice(STRUCTURAL)
        return _row_text(row), None, False
    if r < 0.9:
        return _mangle(rng, _row_text(row)), None, False
    return rng.choice(RAW_LINES), None, False


# -- batch lines and progress files -----------------------------------------------------------
TAMPERS = ["none", "torn", "inject", "duplicate", "garbage", "wrong_id", "wrong_task", "not_object", "bool_line"]


def _tamper(rng, partial: Path, how: str, lines: dict[int, dict]) -> None:
    saved = [json.loads(x) for x in partial.read_bytes().splitlines()[1:]]
    row = rng.choice(saved) if saved else {"id": "x", "line": 1, "task": "echo", "output": "x"}
    extra = {
        "none": b"",
        "torn": b'{"id": "r", "line": 1, "out',
        "inject": json.dumps({**row, "line": rng.choice([0, -1, 99999999, max(lines) + 1]),
                              "output": "INJECTED"}).encode() + b"\n",
        "duplicate": json.dumps({**row, "output": "INJECTED"}).encode() + b"\n",
        "garbage": _mangle(rng, json.dumps(row).encode()).replace(b"\n", b" ") + b"\n",
        "wrong_id": json.dumps({**row, "id": "other"}).encode() + b"\n",
        "wrong_task": json.dumps({**row, "task": "nope"}).encode() + b"\n",
        "not_object": b"[1, 2]\n",
        "bool_line": json.dumps({**row, "line": True}).encode() + b"\n",
    }[how]
    with open(partial, "ab") as f:
        f.write(extra)


def test_campaign_batch_lines_and_progress_files(edge_model, runtime_bundle, tmp_path, error_log):
    from alter_edge.errors import DataError
    from alter_edge.runtime.batch import BatchOptions, run_jsonl

    t = _Tally("batch")
    rng = _rng("batch")
    box = tmp_path / "sandbox"
    (box / "in").mkdir(parents=True)
    (box / "out").mkdir()
    (box / "keep.txt").write_text("a file the job must not touch\n")
    before = _listing(box)
    opts = BatchOptions(batch_size=8, max_new_tokens=2)
    budget, k = _share("batch"), 0
    while t.c.get("inputs", 0) < budget:
        k += 1
        cases = [batch_line(rng) for _ in range(rng.randint(20, 60))]
        body = [c[0].replace(b"\n", b" ") for c in cases]
        inp = box / "in" / f"{k}.jsonl"
        inp.write_bytes(b"\n".join(body) + b"\n")
        t.add("inputs", len(cases))
        nonblank = {i for i, ln in enumerate(body, start=1) if ln.strip()}
        out = box / "out" / f"{k}.jsonl"
        try:
            s = run_jsonl(edge_model, inp, out, opts, progress=False)
        except Exception as e:  # noqa: BLE001 -- a hostile line must never stop the job
            t.fail("tracebacks", f"file {k}: {type(e).__name__}: {e}")
            continue
        recs = [json.loads(x) for x in out.read_bytes().splitlines()]
        lines = [r.get("line") for r in recs]
        t.add("lost_rows", len(nonblank - set(lines)))
        t.add("injected_rows", len(lines) - len(set(lines)) + len(set(lines) - nonblank))
        if set(lines) != nonblank or len(lines) != len(nonblank) or s.rows != len(nonblank):
            t.fail("rows_in_out", f"file {k}: {len(nonblank)} lines, {len(recs)} records, summary {s.rows}")
        for (raw, field, good), ln in zip(cases, range(1, len(cases) + 1), strict=True):
            if ln not in nonblank:
                continue
            rec = next(r for r in recs if r.get("line") == ln)
            if "error" not in rec:
                continue
            msg = rec["error"]
            if good:
                t.fail("good_row_failed", f"{raw[:80]!r}: {msg}")
            if _bad_line(msg) or not msg.startswith(f"line {ln}: "):
                t.fail("not_one_line", msg)
            if "cannot be read (" in msg:
                t.fail("tracebacks", msg)
            if field is not None and field not in msg:
                t.add("unnamed")
                t.fail("field_not_named", f"{field}: {raw[:100]!r} -> {msg}")
        if k % 10 == 1:  # the same file through the command line: exit 0 or 3, no traceback
            from click.testing import CliRunner

            from alter_edge.cli import main

            t.add("cli_runs")
            cli_out = box / "out" / f"{k}.cli.jsonl"
            r = CliRunner().invoke(main, ["run", str(runtime_bundle), "--input", str(inp), "--output", str(cli_out),
                                          "--batch-size", "8", "--max-new-tokens", "2", "--threads", "1", "--quiet"])
            if r.exit_code not in (0, 3) or "Traceback" in r.output or r.exception and not isinstance(
                    r.exception, SystemExit):
                t.fail("tracebacks", f"cli file {k}: exit {r.exit_code}: {r.output[-300:]} {r.exception!r}")
            elif cli_out.read_bytes() != out.read_bytes():
                t.fail("cli_differs", f"file {k}")
        if k % 3 == 0:  # an interrupted run, its progress file tampered with, then resumed
            how = rng.choice(TAMPERS)
            t.add("inputs")
            t.add(f"tamper_{how}")
            again = box / "out" / f"{k}.resumed.jsonl"
            stop = lambda b: (_ for _ in ()).throw(KeyboardInterrupt()) if b == 0 else None  # noqa: E731
            try:
                run_jsonl(edge_model, inp, again, opts, progress=False, on_batch=stop)
            except KeyboardInterrupt:
                pass
            partial = again.with_name(again.name + ".partial")
            if partial.is_file():
                _tamper(rng, partial, how, {r["line"]: r for r in recs})
            try:
                run_jsonl(edge_model, inp, again, opts, resume=True, progress=False)
            except DataError as e:
                if how in ("none", "torn") or _bad_line(str(e)):
                    t.fail("refused_a_good_resume" if how in ("none", "torn") else "not_one_line", str(e))
                t.add("tamper_refused")
                partial.unlink(missing_ok=True)
                continue
            except Exception as e:  # noqa: BLE001
                t.fail("tracebacks", f"resume after {how}: {type(e).__name__}: {e}")
                continue
            if again.read_bytes() != out.read_bytes():
                got = [json.loads(x).get("line") for x in again.read_bytes().splitlines()]
                t.add("injected_rows", max(0, len(got) - len(nonblank)))
                t.add("lost_rows", len(nonblank - set(got)))
                t.fail("resume_differs", f"file {k} after {how}: {len(got)} records for {len(nonblank)} lines")
    after = _listing(box)
    outside = _changed_outside(before, after, ("in", "out"))  # in/: the inputs this test writes
    t.add("files_outside", len(outside))
    if outside:
        t.fail("written_outside", ", ".join(outside[:5]))
    logged = [r for r in error_log.records if r.name.startswith("alter_edge")]
    t.add("tracebacks", len([r for r in logged if r.exc_info]))
    if logged:
        t.fail("logged_errors", "; ".join(r.getMessage()[:100] for r in logged[:3]))
    t.check()


# -- training data lines -----------------------------------------------------------------------
BAD_TASK_NAMES = ["x/../../../../tmp/escaped/pwned", "a\x00b", "a\nb", "\u202eevil", ".hidden", "..", "a" * 65,
                  "a b", "a\\b", "é", ""]


def test_campaign_training_lines(tmp_path, error_log):
    from alter_edge.data import load_jsonl
    from alter_edge.errors import DataError

    t = _Tally("train")
    rng = _rng("train")
    box = tmp_path / "sandbox"
    (box / "data").mkdir(parents=True)
    before = _listing(box)
    good = b'{"task": "echo", "input": "swap cat dog", "target": "dog cat"}'
    for k in range(_share("train")):
        if rng.random() < 0.15:
            name = rng.choice(BAD_TASK_NAMES)
            raw, field, ok = json.dumps({"task": name, "input": "x", "target": "y"}).encode(), "task", False
        else:
            raw, field, ok = batch_line(rng, fields=("task", "input", "target"))
        raw = raw.replace(b"\n", b" ")
        path = box / "data" / f"{k % 50}.jsonl"
        path.write_bytes(good + b"\n" + raw + b"\n")
        t.add("inputs")
        try:
            rows = load_jsonl(path)
        except DataError as e:
            msg = str(e)
            if _bad_line(msg):
                t.fail("not_one_line", msg)
            if ok:
                t.fail("good_row_failed", f"{raw[:80]!r}: {msg}")
            if raw.strip() and "line 2" not in msg:
                t.fail("line_not_named", msg)
            if field is not None and field not in msg:
                t.add("unnamed")
                t.fail("field_not_named", f"{field}: {raw[:100]!r} -> {msg}")
            continue
        except Exception as e:  # noqa: BLE001
            t.fail("tracebacks", f"{raw[:80]!r}: {type(e).__name__}: {str(e)[:100]}")
            continue
        if not ok and raw.strip():
            for r in rows:  # what was accepted must be safe: plain task names, valid Unicode text
                if r.task not in ("echo",) and (r.task.startswith(".") or any(c in r.task for c in "/\\\x00\n\u202e")):
                    t.fail("hostile_task_name_accepted", repr(r.task))
                try:
                    (r.input + r.target).encode("utf-8")
                except UnicodeEncodeError:
                    t.fail("surrogate_accepted", repr(raw[:80]))
    outside = _changed_outside(before, _listing(box), ("data",))
    t.add("files_outside", len(outside))
    if outside:
        t.fail("written_outside", ", ".join(outside[:5]))
    if error_log.records:
        t.fail("logged_errors", error_log.records[0].getMessage()[:200])
    t.check()


# -- manifests: fields and entries ------------------------------------------------------------
def _hostile_value(rng):
    return rng.choice([None, True, False, 0, -1, 1.5, float("nan"), float("inf"), 10**400, "", "x" * 300,
                       "\ud800", "a\nb", "\u202e", "/etc/passwd", "../x", "a/../../b", "C:/w", "a\\b", "\x00",
                       [], {}, [1], {"a": 1}, [[[[]]]], "model.onnx", "fp32", "int3", "d" * 64])


def _mutate_manifest(rng, m: dict) -> str:
    """One mutation of a field or an entry of ``m``; the key it touched (what an error names)."""
    node, key, named = m, None, ""  # named: the nearest key that is a name, not a list index
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = rng.choice(keys)
        named = key if isinstance(key, str) else named
        if isinstance(node[key], (dict, list)) and node[key] and rng.random() < 0.6:
            node = node[key]
            continue
        break
    how = rng.random()
    if key is None or how < 0.5:
        if key is None:
            return ""
        node[key] = _hostile_value(rng)
    elif how < 0.7 and isinstance(node, dict):
        del node[key]
    elif isinstance(node, dict):  # a new entry: a hostile path as a key (files) or an unknown field
        key = rng.choice(["/etc/passwd", "../escape.onnx", "a/../../b", "x\x00y", "sub/../../z", "weights.fp32.bin",
                          "unlisted.onnx", "\u202efile", "a\\b", "C:/w", "extra_field"])
        node[key] = rng.choice(["d" * 64, None, 1, "abc"])
    else:  # a new list entry (a second graph that points out of the bundle, ...)
        node.append(rng.choice([{"path": "../outside.onnx", "task": None, "precision": "fp32", "sha256": "d" * 64},
                                {"path": "/etc/passwd", "sha256": "d" * 64}, "model.onnx", None, 5]))
        return named
    return key if isinstance(key, str) else named


def _hostile_entry(rng, t: _Tally, box: Path, b: Path) -> None:
    """An unlisted file, a symlink (to a file or folder outside, or inside), a FIFO, at any
    depth of bundle ``b``: the load refuses it in one line naming it; then it is removed."""
    from alter_edge.errors import BundleError
    from alter_edge.runtime.bundle import load_bundle

    depth = rng.choice(["", "sub/", "sub/deeper/"])
    name = depth + rng.choice(["x.onnx", "notes.txt", ".hidden", "weights.fp32.bin.bak", "etc_link",
                               os.fsdecode(b"bad\xffname"), "new\nline", "\u202eevil"])
    kind = rng.choice(["file", "link_out_file", "link_out_dir", "link_in", "fifo", "dir_with_file"])
    path = b / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        path.write_bytes(b"\0" * rng.randrange(64))
    elif kind == "link_out_file":
        path.symlink_to(box / "outside" / "secret.txt")
    elif kind == "link_out_dir":
        path.symlink_to(box / "outside", target_is_directory=True)
    elif kind == "link_in":
        path.symlink_to(b / "tokenizer.json")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
        (path / "inner.bin").write_bytes(b"x")
    t.add("inputs")
    t.add(f"entry_{kind}")
    try:
        load_bundle(b)
        t.fail("unlisted_entry_accepted", f"{kind} {name}")
    except BundleError as e:
        msg = str(e)
        t.add("refused")
        if _bad_line(msg):
            t.fail("not_one_line", repr(msg))
        try:
            msg.encode("utf-8")
        except UnicodeEncodeError:
            t.fail("unprintable_message", repr(msg))
        shown_name = repr(path.name)[1:-1]
        if not any(w in msg for w in (path.name, shown_name, name.split("/")[0])):
            t.add("unnamed")
            t.fail("field_not_named", f"{kind} {name}: {msg}")
    except Exception as e:  # noqa: BLE001
        t.fail("tracebacks", f"{kind} {name}: {type(e).__name__}: {str(e)[:150]}")
    finally:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        if depth:
            shutil.rmtree(b / "sub", ignore_errors=True)


def test_campaign_manifests(runtime_bundle, tmp_path, error_log):
    from alter_edge.errors import BundleError
    from alter_edge.runtime.bundle import load_bundle

    t = _Tally("manifest")
    rng = _rng("manifest")
    box = tmp_path / "sandbox"
    b = box / "bundle"
    shutil.copytree(runtime_bundle, b)
    base = json.loads((b / "manifest.json").read_text())
    (box / "outside").mkdir()
    (box / "outside" / "secret.txt").write_text("not the bundle's\n")
    before = {k: v for k, v in _listing(box).items() if k != "bundle/manifest.json"}
    for _ in range(_share("manifest")):
        if rng.random() < 0.1:  # an entry of the bundle folder the manifest does not list
            (b / "manifest.json").write_text(json.dumps(base))
            _hostile_entry(rng, t, box, b)
            continue
        m = json.loads(json.dumps(base))
        keys = [_mutate_manifest(rng, m) for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 4))]
        (b / "manifest.json").write_bytes(_encode(m))
        t.add("inputs")
        try:
            bundle = load_bundle(b)
        except BundleError as e:
            msg = str(e)
            t.add("refused")
            if _bad_line(msg):
                t.fail("not_one_line", msg)
            key = keys[0]
            # a path changed away from a graph's file: that file is then the unlisted one, named
            moved = key in ("path", "external_data") and "is not listed in manifest.json" in msg
            if len(keys) == 1 and key and not moved and not any(w in msg for w in (key, repr(key)[1:-1], f"[{key}]")):
                t.add("unnamed")
                t.fail("field_not_named", f"{key!r}: {msg}")
            continue
        except Exception as e:  # noqa: BLE001
            t.fail("tracebacks", f"{keys}: {type(e).__name__}: {str(e)[:150]}")
            continue
        t.add("accepted")
        for g in bundle.graphs:
            for rel in (g.path, g.ort, *g.external_data):
                if rel is not None and not (b / rel).resolve().is_relative_to(b.resolve()):
                    t.fail("path_outside_accepted", f"{keys}: {rel}")
    (b / "manifest.json").write_text(json.dumps(base))
    after = {k: v for k, v in _listing(box).items() if k != "bundle/manifest.json"}
    outside = _changed_outside(before, after, ())
    t.add("files_outside", len(outside))
    if outside:
        t.fail("written_outside", ", ".join(outside[:5]))
    if error_log.records:
        t.fail("logged_errors", error_log.records[0].getMessage()[:200])
    t.check()


# -- server bodies -------------------------------------------------------------------------
def _server_body(rng) -> tuple[str, bytes, str | None]:
    """(path, body, the field a 400 must name or None)."""
    endpoint = rng.choice(["/v1/completions", "/v1/chat/completions", "/v1/classify"])
    if endpoint == "/v1/completions":
        body = {"model": json.dumps("echo"), "prompt": json.dumps("swap cat dog"), "max_tokens": "2"}
        fields = ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream",
                  "n", "ignore_eos", "truncate", "stream_options"]
    elif endpoint == "/v1/chat/completions":
        body = {"model": json.dumps("echo"), "max_tokens": "2",
                "messages": json.dumps([{"role": "user", "content": "swap cat dog"}])}
        fields = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                  "seed", "stop", "n"]
    else:
        body = {"model": json.dumps("colour"), "input": json.dumps(["is red a colour", "is cat a colour"])}
        fields = ["model", "input", "truncate"]
    r = rng.random()
    if r < 0.1:
        return endpoint, _row_text(body), None
    if r < 0.75:
        field = rng.choice(fields)
        body[field] = rng.choice(HOSTILE_FRAGMENTS + [
            "1e308", "NaN", "Infinity", '[{"role": "user", "content": ["x"]}]', '[{"role": "user"}]',
            '[{"role": "system", "content": "x"}]', '[{"role": "user", "content": "\\ud800"}]', '[' + '"x", ' * 300 + '"x"]',
            '["a", "b", "c", "d", "e"]', '{"include_usage": "yes"}', '[1]', "2049", "0.0", "1e-3", "100.0001",
            '[{"role": "user", "content": [{"type": "text", "text": 5}]}]', '[null]', '[{"role": ["user"], "content": "x"}]',
            '[{"role": "user", "content": [{"type": "image_url", "image_url": "file:///etc/passwd"}]}]',
            json.dumps(["is red a colour"] * 65), json.dumps(["x" * 5000] * 3), '{"include_usage": true, "x": NaN}'])
        return endpoint, _row_text(body), field
    if r < 0.85:
        body[rng.choice(fields)] = rng.choice(STRUCTURAL)
        return endpoint, _row_text(body), None
    if r < 0.95:
        return endpoint, _mangle(rng, _row_text(body)), None
    return endpoint, rng.choice(RAW_LINES[:12] + [b"", b" ", b"7" * 5000]), None


RAW_HTTP = [
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"mo",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n{}",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"m\r\n",
    b"POST /v1/../../etc/passwd HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS hello
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n",
]


def test_campaign_server_bodies(runtime_bundle, tmp_path):
    import http.client
    import socket
    from urllib.parse import urlparse

    pytest.importorskip("uvicorn")
    from alter_edge.testing import load_script

    Server = load_script(Path(__file__).with_name("test_serve.py"), "alter_edge_test_serve").Server
    t = _Tally("server")
    rng = _rng("server")
    box = tmp_path / "sandbox"
    box.mkdir()
    (box / "keep.txt").write_text("x\n")
    before = _listing(box)
    cwd = os.getcwd()
    os.chdir(box)  # the server runs in the sandbox: it must write nothing there
    try:
        s = Server(runtime_bundle, "--max-batch", "4", "--max-queue", "32", "--max-tokens", "4", "--timeout", "10",
                   "--max-classify-inputs", "64", "--max-body-bytes", str(1 << 20), "--log-level", "info")
    finally:
        os.chdir(cwd)
    u = urlparse(s.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    last = time.monotonic()
    try:
        for _ in range(_share("server")):
            if rng.random() < 0.03:  # a client that leaves mid-body, or malformed HTTP, on its own socket
                t.add("inputs")
                t.add("raw_http")
                with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
                    sock.sendall(rng.choice(RAW_HTTP))
                    if rng.random() < 0.5:
                        sock.settimeout(1)
                        try:
                            sock.recv(4096)
                        except OSError:
                            pass
                continue
            path, body, field = _server_body(rng)
            t.add("inputs")
            if time.monotonic() - last > 4:  # uvicorn closes a connection idle for 5 s: start a new one
                conn.close()
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            sock = conn.sock
            r = conn.getresponse()
            data = r.read()
            t.add(f"status_{r.status}")
            if r.status >= 500 and r.status != 504:
                t.fail("server_error", f"{path} {body[:120]!r}: {r.status} {data[:200]!r}")
            if r.status == 400:
                try:
                    err = json.loads(data)["error"]
                except (ValueError, KeyError, TypeError):
                    t.fail("no_error_object", f"{body[:80]!r}: {data[:200]!r}")
                    continue
                if _bad_line(err["message"]):
                    t.fail("not_one_line", err["message"])
                if field is not None and field not in err["message"] and field != err.get("param"):
                    t.add("unnamed")
                    t.fail("field_not_named", f"{field}: {body[:120]!r} -> {err}")
            if r.getheader("connection", "").lower() == "close" or conn.sock is not sock:
                t.fail("connection_closed", f"{path} {body[:80]!r}: {r.status}")
            last = time.monotonic()
        ok = httpx_get(s.url + "/health")
        if ok != 200:
            t.fail("no_health", str(ok))
        time.sleep(0.3)
    finally:
        conn.close()
        s.stop()
    log = "".join(s.lines)
    t.add("tracebacks", log.count("Traceback"))
    if "Traceback" in log or "internal error" in log:
        t.fail("logged_errors", log[log.find("Traceback") - 300:][:1200])
    outside = _changed_outside(before, _listing(box), ())
    t.add("files_outside", len(outside))
    if outside:
        t.fail("written_outside", ", ".join(outside[:5]))
    t.check()


def httpx_get(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status


# -- generation parameters -------------------------------------------------------------------
PARAM_VALUES = {
    "max_new_tokens": [0, -1, 1.5, 2.0, 10**12, 2**63, 10**400, -(10**5000), float("nan"), "3", None, True, [2]],
    "temperature": [-1, float("nan"), float("inf"), 1e-310, 5e-324, 1e308, 10**400, "0.5", True, [1], 100.0001],
    "top_k": [-1, 1.5, 10**12, 2**63, 10**400, float("nan"), "5", True],
    "top_p": [0, -0.1, 1.0000001, float("nan"), float("inf"), 1e-300, "1", True, 10**400],
    "seed": [-1, 2**63, 2**64, 2**200, 10**5000, 1.5, float("nan"), "7", True, 2**63 - 1, 2**31],
    "stop": ["", [""], [1], 5, ["x"] * 1000, "\ud800", ["\x00"], {"a": 1}, b"x", [None]],
    "batch_size": [0, -1, 1.5, True, "2", 10**12, 2**63, -(10**5000), float("nan")],
    "texts": [b"swap", 5, None, {"a": 1}, {"a"}, ["swap cat dog", 5], ["\ud800"], [""], ["x" * 100_000], [[]]],
    "task": ["nope", None, 5, 10**5000, "\ud800", "../echo", "", ["echo"]],
}


LOAD_VALUES = {
    "precision": ["int4", "int8", "fp16", "", None, 5, "FP32", "\ud800", ["fp32"]],
    "threads": [0, -1, 1.5, "2", True, 10**12, None, float("nan")],
    "engine": ["gpu", "", None, 5, "GENAI", ["genai"]],
    "optimization": ["none", "", 5, None, "ALL"],
    "tasks": [["nope"], "echo", [5], ["\ud800"], [], ["../echo"], None],
    "verify": ["yes", 5, None, "cached", False],
}


def _hostile_batch_options(rng, t: _Tally) -> None:
    from alter_edge.errors import AlterEdgeError
    from alter_edge.runtime.batch import BatchOptions

    name = rng.choice(["batch_size", "max_new_tokens"])
    value = rng.choice(PARAM_VALUES["batch_size"] + PARAM_VALUES["max_new_tokens"])
    t.add("inputs")
    t.add("batch_options")
    try:
        BatchOptions(**{name: value})
        t.add("accepted")
    except AlterEdgeError as e:
        t.add("refused")
        words = {"batch_size": ("batch size", "batch_size")}.get(name, (name,))
        if _bad_line(str(e)) or not any(w in str(e) for w in words):
            t.fail("field_not_named", f"BatchOptions {name}: {e}")
    except Exception as e:  # noqa: BLE001
        t.fail("tracebacks", f"BatchOptions {name}: {type(e).__name__}: {str(e)[:150]}")


def _hostile_load(rng, t: _Tally, bundle: Path) -> None:
    from alter_edge.errors import AlterEdgeError
    from alter_edge.runtime import EdgeModel

    name = rng.choice(sorted(LOAD_VALUES))
    value = rng.choice(LOAD_VALUES[name])
    t.add("inputs")
    t.add("load_calls")
    try:
        EdgeModel.load(bundle, **{"threads": 1, name: value})
        t.add("accepted")
    except AlterEdgeError as e:
        msg = str(e)
        t.add("refused")
        if _bad_line(msg):
            t.fail("not_one_line", msg)
        words = {"tasks": ("task",), "precision": ("precision",), "engine": ("engine",)}.get(name, (name,))
        if not any(w in msg for w in words):
            t.add("unnamed")
            t.fail("field_not_named", f"load {name}={value!r}: {msg}")
    except Exception as e:  # noqa: BLE001
        t.fail("tracebacks", f"load {name}={value!r}: {type(e).__name__}: {str(e)[:150]}")


def test_campaign_generation_parameters(runtime_bundle, edge_model, error_log):
    from alter_edge.errors import AlterEdgeError
    from alter_edge.runtime import EdgeModel

    t = _Tally("params")
    rng = _rng("params")
    models = [edge_model]
    try:
        import onnxruntime_genai  # noqa: F401

        models.append(EdgeModel.load(runtime_bundle, threads=1, engine="genai"))
    except ImportError:
        pass
    for _ in range(_share("params")):
        if rng.random() < 0.05:  # EdgeModel.load's own arguments
            _hostile_load(rng, t, runtime_bundle)
            continue
        if rng.random() < 0.05:  # the batch job's options
            _hostile_batch_options(rng, t)
            continue
        m = rng.choice(models)
        kw = {"max_new_tokens": 2, "temperature": rng.choice([0.0, 0.8]), "seed": 1}
        names = rng.sample(sorted(PARAM_VALUES), 1 if rng.random() < 0.8 else 2)
        texts, task = "swap cat dog", "echo"
        for name in names:
            v = rng.choice(PARAM_VALUES[name])
            if name == "texts":
                texts = v
            elif name == "task":
                task = v
            else:
                kw[name] = v
        call = rng.choice(["generate", "stream", "classify"])
        t.add("inputs")
        try:
            if call == "classify":
                m.classify(texts, task="colour" if "task" not in names else task)
            elif call == "stream":
                list(m.stream(texts, task=task, **kw))
            else:
                m.generate(texts, task=task, **kw)
            t.add("accepted")
        except AlterEdgeError as e:
            msg = str(e)
            t.add("refused")
            if _bad_line(msg):
                t.fail("not_one_line", msg)
            asked = [n for n in names if not (call == "classify" and n not in ("texts", "task"))]
            named = {"texts": ("text", "input")}  # a text's own problem is the input's
            if asked and not any(w in msg for n in asked for w in named.get(n, (n,))):
                t.add("unnamed")
                t.fail("field_not_named", f"{m.engine} {call} {names}: {msg}")
        except Exception as e:  # noqa: BLE001
            t.fail("tracebacks", f"{m.engine} {call} {names}: {type(e).__name__}: {str(e)[:150]}")
    if error_log.records:
        t.fail("logged_errors", error_log.records[0].getMessage()[:200])
    t.check()
