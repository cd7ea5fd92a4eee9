"""`alter-edge web`'s file server (alter_edge/web.py) and `export --target web`.

The server: COOP/COEP on every answer, loopback only, and nothing outside its roots (`..`,
encoded dots and slashes, backslashes, absolute paths, symlinks leading out, directories).
The web target: int8 matmuls as DynamicQuantizeLinear + MatMulInteger, no MatMulNBits or
GatherBlockQuantized left, a bundle the Python runtime runs; int4 refused with one line.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter

import pytest
from click.testing import CliRunner

from alter_edge.web import REPO_JS, Mount, WebError, make_server, resolve, web_mounts


@pytest.fixture
def roots(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    (bundle / "weights.int8.bin").write_bytes(b"\0" * 1000)
    (bundle / "sub").mkdir()
    (bundle / "sub" / "x.json").write_text("[]")
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<!doctype html>")
    (tmp_path / "secret.txt").write_text("outside")
    (bundle / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (page / "inside-link.html").symlink_to(page / "index.html")
    return tmp_path, [Mount("/bundle/", bundle.resolve(), no_store=True), Mount("/", page.resolve())]


@pytest.fixture
def server(roots):
    _, mounts = roots
    srv = make_server(mounts, 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(srv, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    c.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def test_serves_files_with_isolation_headers(server):
    status, h, body = _get(server, "/")
    assert status == 200 and body == b"<!doctype html>"
    assert h["content-type"].startswith("text/html")
    assert h["cross-origin-opener-policy"] == "same-origin"
    assert h["cross-origin-embedder-policy"] == "require-corp"
    status, h, body = _get(server, "/bundle/weights.int8.bin")
    assert status == 200 and len(body) == 1000 and h["content-length"] == "1000"
    assert h["cache-control"] == "no-store"  # the page caches bundle files itself
    assert _get(server, "/bundle/sub/x.json")[2] == b"[]"
    status, h, body = _get(server, "/bundle/manifest.json", "HEAD")
    assert status == 200 and body == b"" and h["content-length"] == "2"
    assert _get(server, "/inside-link.html")[0] == 200  # a symlink staying inside its root


@pytest.mark.parametrize("path", [
    "/bundle/../secret.txt", "/../secret.txt", "/bundle/%2e%2e/secret.txt", "/%2e%2e/secret.txt",
    "/bundle/..%2fsecret.txt", "/bundle/sub%2f..%2f..%2fsecret.txt", "/bundle/..%5csecret.txt",
    "/bundle/sub\\..\\..\\secret.txt", "/bundle//etc/passwd", "//etc/passwd", "/bundle/./manifest.json",
    "/bundle/leak.txt", "/bundle/sub", "/bundle/sub/", "/bundle/", "/missing.js", "/bundle/manifest.json%00.png",
    "http://evil/../../secret.txt",
])
def test_nothing_outside_the_roots(server, roots, path):
    status, h, body = _get(server, path)
    assert status == 404, (path, body)
    assert b"outside" not in body
    assert h["cross-origin-embedder-policy"] == "require-corp"
    _, mounts = roots
    assert resolve(mounts, path) is None


def test_binds_loopback_and_counts_requests(server):
    assert server.server_address[0] == "127.0.0.1"
    _get(server, "/bundle/manifest.json")
    _get(server, "/bundle/manifest.json")
    _get(server, "/bundle/../secret.txt")
    from alter_edge.web import request_counts

    assert request_counts(server) == {"/bundle/manifest.json": 2}


def test_web_mounts_refuse_a_folder_without_a_manifest(tmp_path):
    with pytest.raises(WebError, match="is not a bundle: it has no manifest.json"):
        web_mounts(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    js = tmp_path / "js"
    js.mkdir()
    with pytest.raises(WebError, match=r"the demo page \(js/web/page\) is missing .*`js_root`"):
        web_mounts(tmp_path, js)


def test_the_cli_names_a_bad_folder_in_one_line(tmp_path):
    from alter_edge.cli import main

    r = CliRunner().invoke(main, ["web", str(tmp_path), "--port", "0"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [f"Error: {tmp_path.resolve()} is not a bundle: it has no manifest.json"]


@pytest.mark.skipif(not (REPO_JS / "web" / "node_modules" / "onnxruntime-web").is_dir(),
                    reason="js/web/node_modules is missing: run `npm ci --prefix js/web` (scripts/setup.sh does)")
def test_the_page_mounts(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    mounts = web_mounts(tmp_path)
    for path in ("/", "/app.js", "/js/src/model.js", "/js/web/src/index.js", "/vendor/ort/ort.wasm.min.mjs",
                 "/vendor/ort/ort-wasm-simd-threaded.wasm", "/vendor/tokenizers/tokenizers.min.mjs",
                 "/bundle/manifest.json"):
        assert resolve(mounts, path) is not None, path
    for path in ("/vendor/ort/../../puppeteer-core/package.json", "/js/src/../../package.json", "/node_modules/"):
        assert resolve(mounts, path) is None, path


# -- export --target web ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web_bundle(tmp_path_factory, tiny_llama_dir):
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint
    from alter_edge.testing import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("webtarget")
    ck = make_tiny_checkpoint(root / "ck", tiny_llama_dir, kind="lora")
    export_checkpoint(ck, root / "bundle", ExportOptions(tasks="all", int8=True, target="web", progress=False,
                                                         int8_budget=100.0, min_top1_int8=0.0))
    return root / "bundle"


def test_web_target_writes_integer_matmuls(web_bundle):
    import onnx

    manifest = json.loads((web_bundle / "manifest.json").read_text())
    assert {g["path"] for g in manifest["graphs"]} == {"model.int8.onnx", "task-colour.int8.onnx",
                                                       "task-echo.int8.onnx", "task-parity.int8.onnx"}
    for g in manifest["graphs"]:
        ops = Counter(n.op_type for n in onnx.load(web_bundle / g["path"], load_external_data=False).graph.node)
        assert ops["MatMulNBits"] == ops["GatherBlockQuantized"] == ops["MatMul"] == 0, (g["path"], ops)
        assert ops["MatMulInteger"] == ops["DynamicQuantizeLinear"] > 0
    report = json.loads((web_bundle / "validation.json").read_text())
    assert report["passed"] and report["options"]["target"] == "web"
    quantized = [c for c in report["checks"] if c["check"] == "quantized_vs_fp32"]
    assert len(quantized) == 4 and min(c["top1_agreement"] for c in quantized) >= 0.8
    # one shared int8 weight file, about a quarter of fp32's 4 bytes per weight
    size = (web_bundle / "weights.int8.bin").stat().st_size
    assert size < 0.5 * 545024, size  # the fp32 bundle of this checkpoint: 545,024 bytes


def test_web_target_runs_in_the_python_runtime(web_bundle):
    from alter_edge.runtime import EdgeModel

    model = EdgeModel.load(web_bundle, threads=1, preload=True)
    g = model.generate(["swap red blue", "3 5 7"], tasks=["echo", "parity"], max_new_tokens=6)
    assert [x.finish_reason in ("eos", "length") for x in g] == [True, True]
    c = model.classify("is the sky blue", task="colour")
    assert set(c.scores) == {"no", "yes"}


def test_web_target_refuses_int4():
    from alter_edge.errors import ConfigError
    from alter_edge.export.pipeline import ExportOptions

    with pytest.raises(ConfigError, match="target 'web' is for int8 graphs"):
        ExportOptions(int4=True, target="web")
    with pytest.raises(ConfigError, match="target must be 'native' or 'web', got 'wasm'"):
        ExportOptions(int8=True, target="wasm")


def test_export_cli_takes_target_web():
    from alter_edge.cli import main

    r = CliRunner().invoke(main, ["export", "--help"])
    assert "--target [native|web]" in r.output
    r = CliRunner().invoke(main, ["export", "nowhere", "--int4", "--target", "web", "--out", "/tmp/x-none"])
    assert r.exit_code == 1
    assert r.output.startswith("Error: target 'web' is for int8 graphs") and "drop --int4" in r.output, r.output


def test_rows_int8_quantization():
    import numpy as np

    from alter_edge.export.graph import quantize_rows_int8

    w = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    q, s = quantize_rows_int8(w)
    assert q.dtype == np.int8 and q.shape == (64, 96) and s.shape == (64,)
    assert np.abs(q.astype(np.float32) * s[:, None] - w).max() <= s.max() / 2 + 1e-6
    assert np.abs(q).max() == 127
    z = quantize_rows_int8(np.zeros((2, 4), np.float32))
    assert (z[0] == 0).all() and (z[1] == 1).all()
