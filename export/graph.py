"""ONNX graph writing primitives: a small node builder and the external-data weight file that
several graphs of one bundle share (the block-wise quantization it writes: ``export.blockquant``).

Weights are written once per precision into ``weights.<precision>.bin`` beside the graphs;
a graph's initializer points into it by offset (ONNX external data), so the multi-task graph
and every per-task graph of that precision read one copy of the base model. Tensors that
only one graph uses (a task's folded adapter factors) are stored inline in that graph.

Quantization is symmetric and block-wise along the input dimension, the layout of
onnxruntime's ``MatMulNBits`` (``B [N, blocks, block_size * bits / 8]`` uint8, two 4-bit values
a byte, low nibble first; implicit zero point ``2^(bits-1)``; ``scales [N * blocks]``). The
embedding's ``GatherBlockQuantized`` reads the same bytes as ``[vocab, hidden * bits / 8]``,
so a tied embedding and lm_head share them too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from alter_edge.io import disk_full, is_disk_full

from .blockquant import (  # noqa: F401  (also this module's names for its importers)
    QuantizedMatrix,
    block_grid,
    pack_codes,
    quantize_blockwise,
    quantize_rows_int8,
    split_blocks,
)

OPSET = 21
MS = "com.microsoft"
PRECISION_BITS = {"fp32": 0, "int8": 8, "int4": 4}


class WeightFile:
    """One external-data file of a bundle: tensors appended once, by key, 64-byte aligned."""

    ALIGN = 64

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        self._offset = 0
        self._index: dict[str, tuple[int, int, int, tuple[int, ...]]] = {}  # key -> offset, length, dtype, shape
        self.quantized: dict[str, QuantizedMatrix] = {}  # key -> its quantized matrix (later graphs reuse it)
        self.rows_int8: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # key -> per-row int8 weight, scales

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def add(self, key: str, arr: np.ndarray) -> None:
        if key in self._index:
            return
        arr = np.ascontiguousarray(arr)
        pad = -self._offset % self.ALIGN
        if pad:
            self._f.write(b"\0" * pad)
            self._offset += pad
        data = arr.tobytes()
        try:
            self._f.write(data)
        except OSError as e:
            if is_disk_full(e):
                raise disk_full(self.path, len(data)) from e
            raise
        dtype = helper.np_dtype_to_tensor_dtype(arr.dtype)
        self._index[key] = (self._offset, len(data), dtype, tuple(arr.shape))
        self._offset += len(data)

    def tensor(self, key: str, name: str, relative_to: Path, shape: tuple[int, ...] | None = None) -> TensorProto:
        """An initializer ``name`` reading ``key`` (optionally viewed with another ``shape``)."""
        offset, length, dtype, own_shape = self._index[key]
        t = TensorProto()
        t.name = name
        t.data_type = dtype
        t.dims.extend(shape or own_shape)
        t.data_location = TensorProto.EXTERNAL
        location = self.path.relative_to(relative_to).as_posix()
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    def close(self) -> None:
        self._f.close()

    @property
    def bytes(self) -> int:
        return self._offset


class GraphBuilder:
    """Nodes, inputs, outputs and initializers of one graph, with the few composite ops the
    decoder needs. ``weights``: the shared file (None: every tensor inline)."""

    def __init__(self, name: str, precision: str, block_size: int, weights: WeightFile | None,
                 accuracy_level: int | dict[int, int] = 4, adapter_bits: int | None = None,
                 int8_layout: str = "nbits", plan=None):
        if precision not in PRECISION_BITS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISION_BITS)}")
        self.name, self.precision, self.block_size = name, precision, block_size
        self.bits = PRECISION_BITS[precision]
        self.weights = weights
        # MatMulNBits' accuracy_level: one for every matmul, or per weight bits ({4: 0, 8: 4})
        self.accuracy_level = accuracy_level
        # the quantizer (export.quant.QuantPlan): each stored matrix's bits and how it is rounded;
        # None: symmetric round-to-nearest at the graph's bits
        self.plan = plan
        self.matrix_bits: dict[str, int] = {}  # stored key -> bits, for the manifest
        self.adapter_bits = adapter_bits  # adapter factors' bits in a quantized graph (None: the graph's)
        # 8-bit matmuls: "nbits" (MatMulNBits, block-wise) or "integer" (DynamicQuantizeLinear +
        # MatMulInteger, per output channel: the layout onnxruntime-web's WASM build runs fast)
        if int8_layout not in ("nbits", "integer"):
            raise ValueError(f"int8 layout {int8_layout!r} is not 'nbits' or 'integer'")
        self.int8_layout = int8_layout
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._inline: dict[str, TensorProto] = {}
        self._shared: dict[str, tuple[str, tuple[int, ...] | None]] = {}  # initializer -> (key, view shape)
        self._count = 0

    def side_bits(self) -> int:
        """Bits of the low-rank adapter factors (lora A/B, bottleneck down/up): the graph's own by
        default (so lora's B joins the base projection's ``MatMulNBits``), ``adapter_bits`` (8 or 4)
        in a quantized graph when asked; 0 (fp32) in an fp32 graph."""
        if not self.bits:
            return 0
        return self.bits if self.adapter_bits is None else self.adapter_bits

    # -- names and tensors ----------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, arr: np.ndarray, hint: str = "c") -> str:
        name = self.fresh(hint)
        self._inline[name] = numpy_helper.from_array(np.asarray(arr), name)
        return name

    def shared(self, key: str, arr: np.ndarray, view: tuple[int, ...] | None = None) -> str:
        """An initializer for ``arr`` stored under ``key`` in the shared weight file (inline
        when there is none). The same key in another graph reads the same bytes."""
        if self.weights is None:
            return self.const(arr if view is None else arr.reshape(view), key.replace(".", "_"))
        if key not in self.weights:
            self.weights.add(key, arr)
        name = key.replace(".", "_") + ("" if view is None else "_view")
        self._shared[name] = (key, view)
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "",
           **attrs) -> str | list[str]:
        outs = [self.fresh(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(op_type),
                                           domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    # -- composite ops --------------------------------------------------------------------
    def key_bits(self, key: str | None, bits: int | None = None) -> int:
        """The bits a stored matrix gets: the plan's choice for ``key`` (mixed precision), else
        ``bits`` (else the graph's)."""
        bits = self.bits if bits is None else bits
        if self.plan is None or key is None or not bits:
            return bits
        return self.plan.bits(key, bits)

    def level(self, bits: int) -> int:
        if isinstance(self.accuracy_level, dict):
            return self.accuracy_level.get(bits, 4)
        return self.accuracy_level

    def quantized(self, w: np.ndarray, bits: int, key: str | None = None) -> QuantizedMatrix:
        """``w`` quantized; with ``key``, once per weight file (later graphs reuse it)."""
        def make():
            if self.plan is None:
                return quantize_blockwise(w, bits, self.block_size)
            return self.plan.quantize(key, w, bits, self.block_size)

        if key is None or self.weights is None:
            return make()
        cache = self.weights.quantized
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def rows_int8(self, w: np.ndarray, key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``w`` as per-row int8 and scales; with ``key``, once per weight file."""
        if key is None or self.weights is None:
            return quantize_rows_int8(w)
        cache = self.weights.rows_int8
        if key not in cache:
            cache[key] = quantize_rows_int8(w)
        return cache[key]

    def integer_linear(self, x: str, w: np.ndarray, key: str | None, tied_rows: bool) -> str:
        """``x @ w.T`` as DynamicQuantizeLinear (x to uint8, one scale per tensor) + MatMulInteger
        on the int8 weight + the two scales. ``tied_rows``: the int8 weight is stored (N, K), as
        the embedding reads it, and transposed at session start; otherwise stored (K, N)."""
        q, scale = self.rows_int8(w, key)
        n = q.shape[0]
        if tied_rows:
            data = self.shared(key + ".qi8", q) if key else self.const(q, "qweight")
            b = self.op("Transpose", [data], perm=[1, 0])
        else:
            qt = np.ascontiguousarray(q.T)
            b = self.shared(key + ".qi8t", qt) if key else self.const(qt, "qweight")
        s = self.shared(key + ".si8", scale) if key else self.const(scale, "scales")
        xq, xs, xz = self.op("DynamicQuantizeLinear", [x], outputs=3)
        acc = self.op("MatMulInteger", [xq, b, xz, self.const(np.zeros(n, np.int8), "wzero")])
        return self.op("Mul", [self.op("Cast", [acc], to=TensorProto.FLOAT), self.op("Mul", [xs, s])])

    def linear(self, x: str, w: np.ndarray | QuantizedMatrix, key: str | None = None,
               bias: np.ndarray | None = None, bits: int | None = None, tied_rows: bool = False) -> str:
        """``x @ w.T (+ bias)``, ``w`` (N, K) as in torch. fp32: MatMul on the weight stored
        transposed; quantized: MatMulNBits (a zero point input when the matrix has them), or
        with the ``integer`` int8 layout DynamicQuantizeLinear + MatMulInteger. ``key``: store the
        weight in the shared file under it (None: inline, this graph's own); ``bits`` overrides the
        graph's precision (None: the graph's, or the plan's choice for ``key``); ``tied_rows``: the
        weight is stored as it is (an embedding shares it)."""
        bits = self.key_bits(key) if bits is None else bits
        if bits == 8 and self.int8_layout == "integer" and not isinstance(w, QuantizedMatrix):
            y = self.integer_linear(x, w, key, tied_rows)
            return y if bias is None else self.op("Add", [y, self.const(bias.astype(np.float32), "bias")])
        if isinstance(w, QuantizedMatrix) or bits:
            q = w if isinstance(w, QuantizedMatrix) else self.quantized(w, bits, key)
            zp = q.packed_zero_points()
            if key is None:
                b, s = self.const(q.data, "qweight"), self.const(q.scales.reshape(-1), "scales")
                z = None if zp is None else self.const(zp.reshape(-1), "zero_points")
            else:
                b, s = self.shared(key + ".q", q.data), self.shared(key + ".scales", q.scales.reshape(-1))
                z = None if zp is None else self.shared(key + ".zp", zp.reshape(-1))
                self.matrix_bits[key] = q.bits
            ins = [x, b, s]
            if z is not None:
                ins.append(z)
            if bias is not None:
                ins += [""] * (4 - len(ins)) + ["", self.const(bias.astype(np.float32), "bias")]
            return self.op("MatMulNBits", ins, domain=MS, K=q.K, N=q.N, bits=q.bits, block_size=q.block_size,
                           accuracy_level=self.level(q.bits))
        if tied_rows:  # w is also read row-wise (a tied embedding): transposed once, at session start
            wname = self.shared(key, w.astype(np.float32)) if key else self.const(w.astype(np.float32), "weight")
            y = self.op("MatMul", [x, self.op("Transpose", [wname], perm=[1, 0])])
        else:  # stored (K, N): onnxruntime pre-packs a constant MatMul weight
            if key and self.weights is not None and key + ".T" in self.weights:
                wname = self.shared(key + ".T", None)
            else:
                wt = np.ascontiguousarray(w.T, dtype=np.float32)
                wname = self.shared(key + ".T", wt) if key else self.const(wt, "weight")
            y = self.op("MatMul", [x, wname])
        if bias is not None:
            y = self.op("Add", [y, self.const(bias.astype(np.float32), "bias")])
        return y

    # -- the model --------------------------------------------------------------------------
    def add_input(self, name: str, elem: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def add_output(self, name: str, elem: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def model(self, graph_dir: Path) -> onnx.ModelProto:
        inits = list(self._inline.values())
        for name, (key, view) in self._shared.items():
            inits.append(self.weights.tensor(key, name, graph_dir, view))
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="alter-edge")
        m.ir_version = 10
        return m

    def save(self, path: Path) -> dict:
        """Write the graph (its own tensors inline); returns node and operator counts."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        m = self.model(path.parent)
        data = m.SerializeToString()
        try:
            path.write_bytes(data)
        except OSError as e:
            path.unlink(missing_ok=True)
            if is_disk_full(e):
                raise disk_full(path, len(data)) from e
            raise
        ops: dict[str, int] = {}
        for n in self.nodes:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        return {"nodes": len(self.nodes), "operators": dict(sorted(ops.items())), "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}


TP = TensorProto
