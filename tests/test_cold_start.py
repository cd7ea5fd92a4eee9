"""Cold-start options: hashing a weight file keeps it out of resident memory, and
``verify="cached"`` hashes a file again only when it is not the same file that matched."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

from alter_edge.errors import BundleError, ConfigError
from alter_edge.io import sha256_file
from alter_edge.runtime import EdgeModel, load_bundle
from alter_edge.runtime import bundle as bundle_mod


def test_sha256_file_reads_without_mapping_the_file(tmp_path):
    big = tmp_path / "w.bin"
    big.write_bytes(os.urandom(1 << 20) * 64)  # 64 MB
    assert sha256_file(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    code = ("from alter_edge.io import sha256_file\n"
            "def hwm():\n"
            "    return int([x for x in open('/proc/self/status') if x.startswith('VmHWM')][0].split()[1])\n"
            f"before = hwm(); sha256_file({str(big)!r}); print(hwm() - before)\n")
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc here")
    grew_kb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grew_kb < 16 * 1024  # a memory map of it would make all 64 MB resident


@pytest.fixture()
def bundle_copy(runtime_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("ALTER_EDGE_CACHE", str(tmp_path / "cache"))
    b = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, b)
    return b


def _hashed(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = bundle_mod.sha256_file

    def spy(path, *a, **kw):
        seen.append(os.path.basename(path))
        return real(path, *a, **kw)
    monkeypatch.setattr(bundle_mod, "sha256_file", spy)
    return seen


def test_cached_verification_skips_unchanged_files_only(bundle_copy, tmp_path, monkeypatch):
    seen = _hashed(monkeypatch)
    EdgeModel.load(bundle_copy, threads=1, verify="cached")
    first = [n for n in seen if n != "manifest.json"]
    assert "model.fp32.onnx" in first and "tokenizer.json" in first
    assert len(list((tmp_path / "cache" / "verified").iterdir())) == len(first)
    seen.clear()
    m = EdgeModel.load(bundle_copy, threads=1, verify="cached")
    assert [n for n in seen if n != "manifest.json"] == []  # the same files: nothing hashed
    assert m.generate("swap cat dog", task="echo", max_new_tokens=3).token_ids
    # the same bytes written again: a new status-change time, so hashed again (and passes)
    tok = bundle_copy / "tokenizer.json"
    tok.write_bytes(tok.read_bytes())
    seen.clear()
    EdgeModel.load(bundle_copy, threads=1, verify="cached")
    assert [n for n in seen if n != "manifest.json"] == ["tokenizer.json"]
    # other bytes of the same size with the old modification time put back: still caught
    graph = bundle_copy / "model.fp32.onnx"
    st = graph.stat()
    data = bytearray(graph.read_bytes())
    data[-1] ^= 1
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(BundleError, match="model.fp32.onnx does not match"):
        EdgeModel.load(bundle_copy, threads=1, verify="cached")


def test_a_stale_or_broken_cache_entry_means_hashing(bundle_copy, tmp_path, monkeypatch):
    load_bundle(bundle_copy, verify="cached")
    entries = list((tmp_path / "cache" / "verified").iterdir())
    for e in entries:  # an entry naming another digest, and a broken one
        rec = json.loads(e.read_text())
        e.write_text(json.dumps({**rec, "sha256": "0" * 64}) if e is entries[0] else "{not json")
    seen = _hashed(monkeypatch)
    load_bundle(bundle_copy, verify="cached")
    assert "tasks.json" in seen and len([n for n in seen if n != "manifest.json"]) == len(entries)


def test_verify_takes_true_false_or_cached(runtime_bundle):
    with pytest.raises(ConfigError, match="verify must be True, False or 'cached'"):
        load_bundle(runtime_bundle, verify="yes")


def test_the_tokenizer_load_trims_the_heap(runtime_bundle, monkeypatch):
    from alter_edge.runtime import model as model_mod

    calls = []
    monkeypatch.setattr(model_mod, "trim_heap", lambda: calls.append(1) or True)
    EdgeModel.load(runtime_bundle, threads=1, tasks=())
    assert calls == [1]
    monkeypatch.undo()
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert model_mod.trim_heap() is glibc  # nothing to call elsewhere
