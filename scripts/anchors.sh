#!/usr/bin/env bash
# Virtual environments for the benchmark anchors, each its own (their pins conflict with ours):
#   bash scripts/anchors.sh genai   # .venv-genai: onnxruntime-genai 0.18.0 + its model builder
#   bash scripts/anchors.sh llama   # .venv-llama: llama-cpp-python[server] 0.3.36, built from source (~7 min)
#   bash scripts/anchors.sh llama-server   # .llama-server/bin/llama-server: llama.cpp's own server, same sources
#   bash scripts/anchors.sh llama-quantize # .llama-quantize: llama-quantize + convert_hf_to_gguf.py + llama_cpp's
#                                          # bindings on the library built beside it, same sources (~10 min);
#                                          # its Python side runs in .venv-genai (made first when missing)
#   bash scripts/anchors.sh optimum # .venv-optimum: optimum-onnx 0.1.0 (ORTModelForSeq2SeqLM, its ONNX exporter)
#                                   # for benchmarks/t5_bench.py; transformers 4.57 (it pins < 4.58), CPU torch
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
    llama-server)
      # llama.cpp's own HTTP server (parallel slots, continuous batching) for benchmarks/serve_bench.py,
      # built with cmake from the llama.cpp sources that llama-cpp-python's sdist vendors (same flags)
      src=$(mktemp -d)
      "$PY" -m pip download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$src"
      tar xzf "$src"/llama_cpp_python-0.3.36.tar.gz -C "$src"
      cmake -S "$src"/llama_cpp_python-0.3.36/vendor/llama.cpp -B .llama-server -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON >/dev/null
      cmake --build .llama-server --target llama-server -j "$(nproc)" >/dev/null
      rm -rf "$src"
      echo "llama-server: $(pwd)/.llama-server/bin/llama-server"
      ;;
    llama-quantize)
      # benchmarks/int4_anchors.py: GGUFs made from an fp32 Hugging Face folder with llama.cpp's own
      # converter and quantize tool, scored through llama_cpp's ctypes bindings (LLAMA_CPP_LIB_PATH ->
      # the libllama.so built here), all from the sources llama-cpp-python 0.3.36's sdist vendors
      [ -x .venv-genai/bin/python ] || bash "$0" genai
      .venv-genai/bin/python -m pip install -q sentencepiece diskcache  # the converter's / bindings' imports
      src=$(mktemp -d)
      "$PY" -m pip download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$src"
      tar xzf "$src"/llama_cpp_python-0.3.36.tar.gz -C "$src"
      vendor="$src"/llama_cpp_python-0.3.36/vendor/llama.cpp
      cmake -S "$vendor" -B .llama-quantize -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF >/dev/null
      cmake --build .llama-quantize --target llama-quantize -j "${JOBS:-$(nproc)}" >/dev/null
      rm -rf .llama-quantize/py && mkdir -p .llama-quantize/py
      cp -r "$vendor"/convert_hf_to_gguf.py "$vendor"/conversion .llama-quantize/py/
      # the converter's gguf package and the pure-Python llama_cpp bindings, installed into the anchor venv
      .venv-genai/bin/python -m pip install -q "$vendor"/gguf-py
      site=$(.venv-genai/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
      rm -rf "$site"/llama_cpp && cp -r "$src"/llama_cpp_python-0.3.36/llama_cpp "$site"/
      rm -rf "$src"
      echo "llama-quantize: $(pwd)/.llama-quantize/bin/llama-quantize"
      ;;
    optimum)
      # benchmarks/t5_bench.py: Hugging Face's own T5 -> ONNX export (main_export, encoder + decoder with
      # past) and its onnxruntime generate loop. optimum-onnx 0.1.0 asks for optimum ~= 2.1 and
      # transformers < 4.58; torch is the CPU build the project pins (a bare torch pulls a CUDA one);
      # onnxruntime is the project venv's version when there is one, so both sides run the same kernels
      [ -x .venv-optimum/bin/python ] || "$PY" -m venv .venv-optimum
      .venv-optimum/bin/python -m pip install -q --upgrade pip
      ort=$( [ -x .venv/bin/python ] && .venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)' \
             2>/dev/null || echo 1.32.0)
      .venv-optimum/bin/python -m pip install -q torch==2.13.0 "optimum-onnx[onnxruntime]==0.1.0" \
        "optimum~=2.1.0" "transformers>=4.57,<4.58" "onnxruntime==$ort" onnx safetensors accelerate
      .venv-optimum/bin/python -c 'import optimum.onnxruntime, optimum.exporters.onnx, torch, transformers, onnxruntime
print("optimum-onnx ok: torch", torch.__version__, "transformers", transformers.__version__, "onnxruntime",
      onnxruntime.__version__)'
      ;;
    *) echo "unknown anchor $what (genai, llama, llama-server, llama-quantize, optimum)" >&2; exit 2 ;;
  esac
done
