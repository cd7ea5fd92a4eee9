"""int8 and int4 weight quantization, with a check that every large weight matmul was actually
quantized.

- int8, ``blockwise`` (the default): 8-bit ``MatMulNBits`` (one scale per block of 32 weights
  along the reduction axis; at run time the CPU kernel quantizes activations per block of 32
  too, so one outlier channel only coarsens its own block) plus a per-row int8 embedding table.
- int8, ``dynamic``: onnxruntime's dynamic quantization (per-channel int8 weights, activations
  quantized per tensor at run time: ``MatMulInteger``). About 1.2x faster here, but a per-tensor
  activation scale is what SmolLM2's activation outliers break (docs/export.md).
- int4: weight-only 4-bit ``MatMulNBits``, embedding ``GatherBlockQuantized``.

Two ways a weight escapes onnxruntime's quantizers, both fixed before quantizing:

- ``Gemm``: dynamic int8 only rewrites ``MatMul`` (``IntegerOpsRegistry`` has no Gemm) and
  MatMulNBits only ``MatMul`` too, so a constant-weight Gemm (GPT-2's Conv1D exports as one)
  becomes ``MatMul`` + ``Add``.
- ``MatMul(x, Transpose(W))`` on a constant ``W`` (a tied embedding used as lm_head): the
  transposed weight is stored as its own initializer (an untied constant).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from alter_edge.errors import BundleError

log = logging.getLogger(__name__)

INT8_METHODS = ("blockwise", "dynamic")
# MatMulNBits accuracy_level 4: the CPU kernel quantizes activations to int8 per block and runs
# int8 dot products. Without it, 8-bit weights take a slow path: one 576x1536 matmul at M=1 took
# 2.7 ms against 17 us (level 4) and 17 us (dynamic int8); benchmarks/compare_bundles.py shows
# the whole-model effect (docs/export.md).
INT8_ACCURACY_LEVEL = 4
LARGE_WEIGHT = 1024  # weight elements from which a MatMul/Gemm must be quantized


class QuantizationError(BundleError):
    """A large weight matmul escaped quantization (named in the message)."""


def _initializers(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def prepare_for_quantization(src: Path, dst: Path) -> dict:
    """Rewrite constant-weight Gemm as MatMul + Add and untie transposed constant weights."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    inits = _initializers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    new_nodes, gemms, untied = [], 0, 0
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in producers:
            p = producers[node.input[1]]
            if p.op_type == "Transpose" and p.input[0] in inits and len(inits[p.input[0]].dims) == 2:
                w = numpy_helper.to_array(inits[p.input[0]]).T.copy()
                name = f"{p.input[0]}__untied_T_{untied}"
                model.graph.initializer.append(numpy_helper.from_array(w, name))
                node.input[1] = name
                untied += 1
        if node.op_type == "Gemm" and node.input[1] in inits:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0):
                b_name = node.input[1]
                if attrs.get("transB", 0):
                    w = numpy_helper.to_array(inits[b_name]).T.copy()
                    b_name = f"{b_name}__T"
                    model.graph.initializer.append(numpy_helper.from_array(w, b_name))
                mm_out = node.output[0] + "__mm" if len(node.input) > 2 and node.input[2] else node.output[0]
                new_nodes.append(helper.make_node("MatMul", [node.input[0], b_name], [mm_out], name=node.name + "_MatMul"))
                if mm_out != node.output[0]:
                    new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]],
                                                      name=node.name + "_Add"))
                gemms += 1
                continue
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(_without_dead_nodes(new_nodes, {o.name for o in model.graph.output}))
    _drop_unused_initializers(model)
    onnx.save(model, str(dst))
    return {"gemm_to_matmul": gemms, "untied_transposed_weights": untied}


def _without_dead_nodes(nodes: list, graph_outputs: set[str]) -> list:
    """Drop nodes none of whose outputs is read (the Transpose left behind by untying)."""
    while True:
        read = {i for n in nodes for i in n.input} | graph_outputs
        live = [n for n in nodes if any(o in read for o in n.output)]
        if len(live) == len(nodes):
            return live
        nodes = live


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def weight_matmuls(path: Path, min_elems: int = LARGE_WEIGHT) -> list[str]:
    """Names of float MatMul/Gemm nodes (in graph order) whose weight is a large constant,
    directly or through a Transpose: what a quantizer should have rewritten."""
    import onnx

    model = onnx.load(str(path))
    inits = _initializers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "FusedMatMul"):
            continue
        b = node.input[1]
        if b not in inits and b in producers and producers[b].op_type == "Transpose":
            b = producers[b].input[0]
        init = inits.get(b)
        if init is not None and init.data_type == onnx.TensorProto.FLOAT and int(np.prod(init.dims)) >= min_elems:
            found.append(node.name)
    return found


def matmuls_with_weights(path: Path, weights: list[np.ndarray]) -> list[str]:
    """MatMul nodes whose constant weight equals one of ``weights`` (``(in, out)`` arrays), found
    by value: the exporter's node and initializer names do not say which module they came from.
    The pipeline keeps the token gate's projections in fp32 this way."""
    import onnx
    from onnx import numpy_helper

    if not weights:
        return []
    model = onnx.load(str(path))
    inits = _initializers(model)
    shapes = {w.shape for w in weights}
    found = []
    for node in model.graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if init is None or tuple(init.dims) not in shapes:
            continue
        value = numpy_helper.to_array(init)
        if any(w.shape == value.shape and np.array_equal(w, value) for w in weights):
            found.append(node.name)
    return found


def check_all_quantized(path: Path, allowed_fp32: set[str], precision: str) -> None:
    escaped = [n for n in weight_matmuls(path) if n not in allowed_fp32]
    if escaped:
        more = f" (and {len(escaped) - 5} more)" if len(escaped) > 5 else ""
        raise QuantizationError(
            f"{precision} quantization left {len(escaped)} large weight matmul(s) in fp32 in {Path(path).name}: "
            f"{', '.join(escaped[:5])}{more}"
        )


def activation_outliers(prepared: Path, feeds: list[dict]) -> dict[str, float]:
    """Per weight matmul: ``max|x| / rms(x)`` of its input over ``feeds``. Dynamic int8 quantizes
    each activation per tensor, so a matmul whose input has outliers loses the most."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(prepared))
    names = set(weight_matmuls(prepared))
    inputs = {n.name: n.input[0] for n in model.graph.node if n.name in names}
    known = {o.name for o in model.graph.output}
    for x in sorted(set(inputs.values()) - known):
        model.graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    wanted = sorted(set(inputs.values()))
    peak = dict.fromkeys(wanted, 0.0)
    for feed in feeds:
        for x, v in zip(wanted, sess.run(wanted, feed), strict=True):
            v = np.asarray(v, np.float32)
            peak[x] = max(peak[x], float(np.abs(v).max() / (np.sqrt((v * v).mean()) + 1e-12)))
    return {node: peak[x] for node, x in inputs.items()}


def sensitivity_ladder(prepared: Path, feeds: list[dict] | None = None) -> list[tuple[str, list[str]]]:
    """Node sets to keep in fp32, tried in order when the int8 budget is missed: nothing, then
    the weight matmuls whose inputs carry the largest outliers (measured on ``feeds``: the
    validation prompts), 5%, 15%, 30% of them, each with the lm_head (the last weight matmul).
    Without feeds the ranking is positional: the lm_head, then the top quarter / half."""
    nodes = weight_matmuls(prepared)
    if not nodes:
        return [("none", [])]
    n, lm_head = len(nodes), nodes[-1]
    if feeds:
        score = activation_outliers(prepared, feeds)
        ranked = sorted(nodes, key=lambda x: -score.get(x, 0.0))
        rungs = [("none", [])]
        for frac in (0.05, 0.15, 0.30):
            k = max(1, round(n * frac))
            rungs.append((f"outliers_top{int(frac * 100)}%+lm_head", sorted(set(ranked[:k]) | {lm_head})))
        return rungs
    return [("none", []), ("lm_head", [lm_head]),
            ("lm_head+top_quarter", nodes[-max(2, n // 4):]), ("lm_head+top_half", nodes[-max(2, n // 2):])]


def quantize_int8_dynamic(prepared: Path, dst: Path, exclude: list[str]) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(prepared), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gather"], nodes_to_exclude=list(exclude),
                     extra_options={"MatMulConstBOnly": True})
    check_all_quantized(dst, set(exclude), "int8")
    import onnx

    ops = {n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node}
    return {"method": "dynamic int8, per-channel symmetric weights (MatMulInteger); embedding Gather int8",
            "embeddings_quantized": "DequantizeLinear" in ops, "kept_fp32": list(exclude)}


def quantize_int8_blockwise(prepared: Path, dst: Path, exclude: list[str], block_size: int) -> dict:
    """8-bit ``MatMulNBits`` (symmetric, ``block_size`` weights per scale) for every
    weight matmul not in ``exclude``, and the embedding table stored as int8 rows with one scale
    per row."""
    import onnx

    model = _matmul_nbits(onnx.load(str(prepared)), 8, block_size, ("MatMul",), (("MatMul", 0),), exclude,
                          accuracy_level=INT8_ACCURACY_LEVEL)
    rows = _int8_embedding_rows(model)
    onnx.save(model, str(dst))
    check_all_quantized(dst, set(exclude), "int8")
    return {"method": f"8-bit MatMulNBits, symmetric, block size {block_size}, accuracy_level "
                      f"{INT8_ACCURACY_LEVEL} (activations int8 per block at run time); embedding rows int8 "
                      "with a scale per row",
            "embeddings_quantized": rows > 0, "block_size": block_size, "kept_fp32": list(exclude)}


def _matmul_nbits(model, bits: int, block_size: int, ops: tuple, axes: tuple, exclude: list[str] = (),
                  accuracy_level: int | None = None):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                             nodes_to_exclude=list(exclude), op_types_to_quantize=ops, quant_axes=axes,
                             accuracy_level=accuracy_level)
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero blocks: the quantizer handles them
        q.process()
    q.model.topological_sort()
    return q.model.model


def _int8_embedding_rows(model) -> int:
    """``Gather(E, ids)`` on a large float table -> ``Gather(E_int8, ids) * Gather(scale, ids)``:
    symmetric int8 with one scale per row, so rare tokens' small rows keep their precision (a
    per-tensor scale would flatten them). Returns how many tables were rewritten."""
    from onnx import TensorProto, helper, numpy_helper

    inits = _initializers(model)
    nodes, done = [], set()
    for node in model.graph.node:
        init = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if (init is None or init.data_type != TensorProto.FLOAT or len(init.dims) != 2 or axis != 0
                or int(np.prod(init.dims)) < LARGE_WEIGHT):
            nodes.append(node)
            continue
        name = node.input[0]
        if name not in done:  # a table gathered by several nodes is stored once
            w = numpy_helper.to_array(init)
            scale = (np.abs(w).max(axis=1, keepdims=True) / 127.0).astype(np.float32)
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
            model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}__int8"),
                                            numpy_helper.from_array(scale, f"{name}__row_scale")])
            done.add(name)
        out, tag = node.output[0], node.name or name
        nodes += [
            helper.make_node("Gather", [f"{name}__int8", node.input[1]], [f"{out}__q"], name=f"{tag}_q", axis=0),
            helper.make_node("Cast", [f"{out}__q"], [f"{out}__f"], name=f"{tag}_cast", to=TensorProto.FLOAT),
            helper.make_node("Gather", [f"{name}__row_scale", node.input[1]], [f"{out}__s"], name=f"{tag}_s", axis=0),
            helper.make_node("Mul", [f"{out}__f", f"{out}__s"], [out], name=f"{tag}_dq"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model)
    return len(done)


def quantize_int4(prepared: Path, dst: Path, block_size: int, exclude: list[str] = ()) -> dict:
    import onnx

    model = _matmul_nbits(onnx.load(str(prepared)), 4, block_size, ("MatMul", "Gather"),
                          (("MatMul", 0), ("Gather", 1)), exclude)
    onnx.save(model, str(dst))
    check_all_quantized(dst, set(exclude), "int4")
    ops = {n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node}
    return {"method": f"weight-only 4-bit MatMulNBits, symmetric, block size {block_size}",
            "embeddings_quantized": "GatherBlockQuantized" in ops, "block_size": block_size,
            "kept_fp32": list(exclude)}
