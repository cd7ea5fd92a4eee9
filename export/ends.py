"""The two ends of a decoder graph, around its blocks: the inputs (names from the graph contract,
``runtime.contract.KVLayout``), the embedding (fp32 ``Gather``, ``GatherBlockQuantized`` over the
quantized lm_head bytes, or int8 rows), learned positions, and the last position's logits with
the outputs. Called by ``export.builder.DecoderBuilder.build``."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from alter_edge.runtime.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, TASK_IDS, KVLayout

from .graph import MS, GraphBuilder


def add_inputs(g: GraphBuilder, kv: KVLayout, multitask: bool) -> dict[str, str]:
    """Every graph input, in the contract's order (``KVLayout.input_names``)."""
    shapes = {INPUT_IDS: (TensorProto.INT64, ["batch", "seq"]),
              ATTENTION_MASK: (TensorProto.INT64, ["batch", "total_seq"]),
              TASK_IDS: (TensorProto.INT64, ["batch"])}
    past = (TensorProto.FLOAT, ["batch", kv.num_kv_heads, "past_seq", kv.head_dim])
    return {name: g.add_input(name, *shapes.get(name, past)) for name in kv.input_names(multitask)}


def add_outputs(g: GraphBuilder, kv: KVLayout, logits: str, vocab: int) -> None:
    """Every graph output, in the contract's order (``KVLayout.output_names``); the presents are
    GroupQueryAttention's outputs already."""
    g.op("Identity", [logits], outputs=[LOGITS])
    present = (TensorProto.FLOAT, ["batch", kv.num_kv_heads, "total_seq", kv.head_dim])
    for name in kv.output_names():
        g.add_output(name, *((TensorProto.FLOAT, ["batch", 1, vocab]) if name == LOGITS else present))


def lengths(g: GraphBuilder, mask: str) -> tuple[str, str]:
    """``seqlens_k`` = valid length - 1 per row, ``total_sequence_length`` = the mask's width (int32)."""
    T = TensorProto
    one = g.const(np.array([1], np.int64), "one")
    seqlens = g.op("Cast", [g.op("Sub", [g.op("ReduceSum", [mask, one], keepdims=0), one])], to=T.INT32)
    total = g.op("Cast", [g.op("Gather", [g.op("Shape", [mask]), g.const(np.array(1, np.int64), "idx1")],
                               axis=0)], to=T.INT32)
    return seqlens, total


def embedding(b, g: GraphBuilder, ids: str, block_size: int):
    """Token embeddings ``[batch, seq, hidden]`` and what the lm_head matmul reads (tied: the
    quantized lm_head's bytes, viewed as ``[vocab, hidden * bits / 8]``). ``b``: the builder."""
    T = TensorProto
    if g.bits == 8 and g.int8_layout == "integer":
        # int8 rows and one scale per row; tied: the lm_head's int8 bytes, read row-wise
        key = "lm_head" if b.tied else "embed"
        q, scale = g.rows_int8(b.embed, key)
        rows = g.op("Cast", [g.op("Gather", [g.shared(f"{key}.qi8", q), ids], axis=0)], to=T.FLOAT)
        row_scale = g.op("Unsqueeze", [g.op("Gather", [g.shared(f"{key}.si8", scale), ids], axis=0),
                                       g.const(np.array([-1], np.int64), "ax_last")])
        return g.op("Mul", [rows, row_scale]), (b.embed if b.tied else b.lm_head)
    if g.bits:
        shared_head = b.tied and b.embed.shape[1] % block_size == 0
        key = "lm_head" if shared_head else "embed"
        q = g.quantized(b.embed, g.key_bits(key), key)
        g.matrix_bits[key] = q.bits
        data = g.shared(f"{key}.q", q.data, view=(b.vocab, q.data.shape[1] * q.data.shape[2]))
        scales = g.shared(f"{key}.scales", q.scales.reshape(-1), view=q.scales.shape)
        ins = [data, ids, scales]
        zp = q.packed_zero_points()
        if zp is not None:
            ins.append(g.shared(f"{key}.zp", zp.reshape(-1), view=zp.shape))
        h = g.op("GatherBlockQuantized", ins, domain=MS, bits=q.bits, block_size=q.block_size,
                 quantize_axis=1, gather_axis=0)
        return h, (q if shared_head else b.lm_head)
    h = g.op("Gather", [g.shared("lm_head" if b.tied else "embed", b.embed), ids], axis=0)
    return h, (b.embed if b.tied else b.lm_head)


def position_ids(g: GraphBuilder, ids: str, seqlens: str, total: str) -> str:
    """Each token's position ``[batch, seq]``, as GroupQueryAttention's rotary counts them: ``0..S-1``
    in a first prompt (``S`` = the mask's width, padded rows included), else
    ``seqlens_k + 1 - S + s``."""
    T = TensorProto
    s = g.op("Gather", [g.op("Shape", [ids]), g.const(np.array(1, np.int64), "idx1")], axis=0)
    ar = g.op("Unsqueeze", [g.op("Range", [g.const(np.array(0, np.int64), "zero"), s,
                                          g.const(np.array(1, np.int64), "one")]),
                            g.const(np.array([0], np.int64), "ax0")])  # (1, S)
    first = g.op("Equal", [s, g.op("Cast", [total], to=T.INT64)])
    past = g.op("Sub", [g.op("Add", [g.op("Cast", [seqlens], to=T.INT64), g.const(np.array(1, np.int64), "one")]),
                        s])
    later = g.op("Add", [g.op("Unsqueeze", [past, g.const(np.array([1], np.int64), "ax1")]), ar])  # (B, S)
    return g.op("Where", [first, g.op("Expand", [ar, g.op("Shape", [later])]), later])


def last_logits(b, g: GraphBuilder, x: str, ids: str, seqlens: str, head) -> str:
    """Logits only at each row's last valid position of this step: ``min(seqlens_k, seq - 1)`` is
    ``len - 1`` in a right-padded prompt and 0 in a one-token step; then the family's logits
    divisor (Granite) and softcap (Gemma: ``cap * tanh(logits / cap)``)."""
    T = TensorProto
    last_seq = g.op("Sub", [g.op("Gather", [g.op("Shape", [ids]), g.const(np.array(1, np.int64), "idx1")],
                                 axis=0), g.const(np.array(1, np.int64), "one_s")])
    pos = g.op("Min", [g.op("Cast", [seqlens], to=T.INT64), last_seq])
    x = g.op("GatherND", [x, g.op("Unsqueeze", [pos, g.const(np.array([1], np.int64), "ax1")])], batch_dims=1)
    x = g.op("Unsqueeze", [x, g.const(np.array([1], np.int64), "ax1")])  # (B, 1, H)
    logits = g.linear(x, head, key="lm_head" if b.tied else "lm_head_untied", tied_rows=b.tied, bias=b.head_bias)
    if b.logits_divisor is not None:
        logits = g.op("Div", [logits, g.const(np.float32(b.logits_divisor), "logits_div")])
    if b.logit_softcap is not None:
        cap = g.const(np.float32(b.logit_softcap), "softcap")
        logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, cap])]), cap])
    return logits
