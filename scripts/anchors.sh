#!/usr/bin/env bash
# Virtual environments for the benchmark anchors, each its own (their pins conflict with ours):
#   bash scripts/anchors.sh genai   # .venv-genai: onnxruntime-genai 0.18.0 + its model builder
#   bash scripts/anchors.sh llama   # .venv-llama: llama-cpp-python[server] 0.3.36, built from source (~7 min)
# Benchmarks skip an anchor whose venv is missing, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
for what in "${@:-genai}"; do
  case "$what" in
    genai)
      [ -x .venv-genai/bin/python ] || "$PY" -m venv .venv-genai
      .venv-genai/bin/python -m pip install -q --upgrade pip
      # the builder reads a Hugging Face model folder with torch/transformers and writes with onnx-ir
      .venv-genai/bin/python -m pip install -q torch==2.13.0 'transformers>=5.0,<5.40' safetensors \
        onnxruntime-genai==0.18.0 onnx onnx-ir onnxscript
      ;;
    llama)
      [ -x .venv-llama/bin/python ] || "$PY" -m venv .venv-llama
      .venv-llama/bin/python -m pip install -q --upgrade pip
      # GGML_NATIVE=ON segfaulted on an AMX machine here; AVX-512 on, AMX off ran
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
        .venv-llama/bin/python -m pip install -q "llama-cpp-python[server]==0.3.36"
      ;;
    *) echo "unknown anchor $what (genai, llama)" >&2; exit 2 ;;
  esac
done
