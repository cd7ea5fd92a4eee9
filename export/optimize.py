"""onnxruntime offline graph optimization, operator counts, and ORT-format conversion."""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# EXTENDED: constant folding, redundant-node removal and the CPU fusions (SimplifiedLayerNorm,
# Gelu, FusedMatMul, ...). ALL would add NCHWc layout ops tied to this machine's CPU.
LEVELS = ("basic", "extended")


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def graph_parameters(path: Path) -> int:
    """Number of weight elements stored in the graph's initializers."""
    import numpy as np
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(i.dims)) if len(i.dims) else 1 for i in model.graph.initializer))


def optimize_graph(src: Path, dst: Path, level: str = "extended") -> dict:
    """Run onnxruntime's graph optimizer once and save the result (``dst``)."""
    import onnxruntime as ort

    if level not in LEVELS:
        raise ValueError(f"optimization level {level!r} is not one of {', '.join(LEVELS)}")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if level == "extended"
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    so.optimized_model_filepath = str(dst)
    model, fused = _transposed_weights_to_fused_matmul(src)
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    before, after = op_counts(src), op_counts(dst)
    return {"level": level, "ops_before": before, "ops_after": after, "tied_weights_kept_shared": fused,
            "nodes_before": sum(before.values()), "nodes_after": sum(after.values())}


def _transposed_weights_to_fused_matmul(src: Path):
    """``MatMul(x, Transpose(W))`` on a constant ``W`` that other nodes also read (a tied
    embedding) -> ``com.microsoft.FusedMatMul(x, W, transB=1)``. Without it, constant folding
    stores a transposed copy of the embedding (+vocab x hidden floats)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    inits = {i.name for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, int] = collections.Counter(i for n in model.graph.node for i in n.input)
    fused, dead = 0, set()
    nodes = []
    for node in model.graph.node:
        p = producers.get(node.input[1]) if node.op_type == "MatMul" else None
        perm = [list(a.ints) for a in p.attribute if a.name == "perm"] if p is not None else []
        if (p is not None and p.op_type == "Transpose" and p.input[0] in inits and readers[p.input[0]] > 1
                and perm in ([], [[1, 0]]) and readers[p.output[0]] == 1):
            nodes.append(helper.make_node("FusedMatMul", [node.input[0], p.input[0]], list(node.output),
                                          name=node.name, domain="com.microsoft", transB=1, alpha=1.0))
            dead.add(id(p))
            fused += 1
        else:
            nodes.append(node)
    if fused:
        del model.graph.node[:]
        model.graph.node.extend(n for n in nodes if id(n) not in dead)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model, fused


def convert_to_ort(graphs: list[Path], bundle: Path) -> dict:
    """Write ``<graph>.ort`` beside each graph and one reduced-operator config for all of them
    (``required_operators.config``, the input of onnxruntime's ``--include_ops_by_config``)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    written = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, g in enumerate(graphs):
            (tmp / "in" / str(i)).mkdir(parents=True)
            shutil.copy(g, tmp / "in" / str(i) / g.name)
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink):
            convert_onnx_models_to_ort(tmp / "in", output_dir=tmp / "out",
                                       optimization_styles=[OptimizationStyle.Fixed],
                                       enable_type_reduction=False)
        log.debug("%s", sink.getvalue())
        for i, g in enumerate(graphs):
            src = tmp / "out" / str(i) / (g.stem + ".ort")
            if not src.is_file():
                raise RuntimeError(f"ORT-format conversion produced no file for {g}")
            dst = g.with_suffix(".ort")
            shutil.move(src, dst)
            written.append(dst)
        configs = sorted((tmp / "out").glob("*.config"))
        if not configs:
            raise RuntimeError("ORT-format conversion wrote no reduced-operator config")
        shutil.move(configs[0], bundle / "required_operators.config")
    return {"files": [str(p.relative_to(bundle)) for p in written], "config": "required_operators.config"}
