"""One-op ONNX graphs for timing matmul variants in onnxruntime-web's WASM build (the op-by-op
side of issue 33's question: why quantized graphs decode slowly in WASM).

Writes ``<out>/<variant>-<K>x<N>.onnx``: ``y = x @ W.T`` for one SmolLM2-135M projection shape,
written as each candidate layout writes it:

- ``fp32``: MatMul on the fp32 weight (K, N);
- ``nbits8-acc4`` / ``nbits8-acc0`` / ``nbits4-acc4`` / ``nbits4-acc0``: MatMulNBits (block 32);
- ``dq8``: DequantizeLinear (int8, per column) + MatMul;
- ``mmint8``: DynamicQuantizeLinear + MatMulInteger (uint8 x int8) + scale (Mul);
- ``dqmm8``: com.microsoft DynamicQuantizeMatMul (the fused form of the previous one).

    python benchmarks/js_bench/micro.py --out /tmp/micro
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from alter_edge.export.graph import MS, quantize_blockwise

# SmolLM2-135M: hidden 576; q/k/v packed 960; gate/up packed 3072; down 1536 -> 576; lm_head 49152
SHAPES = [(576, 960), (576, 3072), (1536, 576), (576, 49152)]
VARIANTS = ["fp32", "nbits8-acc4", "nbits8-acc0", "nbits4-acc4", "nbits4-acc0", "dq8", "mmint8", "dqmm8"]


def per_column_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W (N, K) -> int8 (K, N) and per-column scales (N,), symmetric."""
    scale = np.abs(w).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.T), scale.astype(np.float32)


def graph(variant: str, w: np.ndarray) -> onnx.ModelProto:
    n, k = w.shape
    nodes, inits = [], []
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])
    if variant == "fp32":
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), "w"))
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"]))
    elif variant.startswith("nbits"):
        bits, acc = int(variant[5]), int(variant[-1])
        q = quantize_blockwise(w, bits, 32)
        inits += [numpy_helper.from_array(q.data, "b"), numpy_helper.from_array(q.scales.reshape(-1), "s")]
        nodes.append(helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], domain=MS, K=k, N=n, bits=bits,
                                      block_size=32, accuracy_level=acc))
    else:
        q, scale = per_column_int8(w)
        inits += [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "s"),
                  numpy_helper.from_array(np.zeros(n, np.int8), "z")]
        if variant == "dq8":
            nodes += [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["wf"], axis=1),
                      helper.make_node("MatMul", ["x", "wf"], ["y"])]
        elif variant == "mmint8":
            nodes += [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                      helper.make_node("MatMulInteger", ["xq", "q", "xz", "z"], ["acc"]),
                      helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                      helper.make_node("Mul", ["xs", "s"], ["ss"]),
                      helper.make_node("Mul", ["accf", "ss"], ["y"])]
        elif variant == "dqmm8":
            nodes.append(helper.make_node("DynamicQuantizeMatMul", ["x", "q", "s", "z"], ["y"], domain=MS))
        else:
            raise ValueError(variant)
    g = helper.make_graph(nodes, variant, [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)])
    m.ir_version = 10
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, n in SHAPES:
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        for v in args.variants.split(","):
            onnx.save(graph(v, w), args.out / f"{v}-{k}x{n}.onnx")
            print(args.out / f"{v}-{k}x{n}.onnx")


if __name__ == "__main__":
    main()
