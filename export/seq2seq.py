"""Build the two ONNX graphs of an MTA T5 checkpoint (``runtime.contract.Seq2SeqLayout``).

Written op by op with the decoder builder's primitives (``export.graph.GraphBuilder``: fp32
``MatMul`` or ``MatMulNBits``, external weights shared by every graph of a precision):

- the **encoder graph**: the shared embedding, each encoder block (RMSNorm without mean as
  ``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization``, packed q/k/v,
  ``MultiHeadAttention`` with ``scale=1`` and an ``attention_bias`` that holds T5's relative
  position bias, bidirectional buckets from the first block's table, plus the padding mask,
  the o projection, the FFN), the final norm, then every decoder layer's cross-attention k/v
  projections of that output: ``cross_key_values.{i}.key / .value`` ``[b, heads, enc_seq, d_kv]``;
- the **decoder graph**: per block self attention (``MultiHeadAttention`` with the past cache,
  causal buckets from the decoder's first block, positions the running count of
  ``attention_mask`` ones), cross attention on the cross cache (``encoder_attention_mask`` as a
  bias), the FFN; the final norm, ``d_model ** -0.5`` before a tied head, logits at every position.

The FFN is v1.0's ReLU ``wi``/``wo`` or v1.1's gated-GELU (tanh) ``wi_0``/``wi_1``/``wo``. An MTA
block's adapters are its kind's graph piece (``alter_edge.kinds``), in both stacks; a decoder
block's adapters on its cross-attention k/v run in the encoder graph (they read the encoder
output), with the same ``task_ids``. The relative bias is a table over the clipped distance
``[-max_distance, max_distance]`` made by transformers' own bucket function: nothing is
bucketed in the graph.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto

from alter_edge.errors import ConfigError
from alter_edge.kinds.base import to_numpy
from alter_edge.runtime.contract import (
    ATTENTION_MASK,
    ENCODER_ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    TASK_IDS,
    KVLayout,
    Seq2SeqLayout,
)

from . import ends
from .adapters import Emit, adapter_for, emit_mixtures
from .builder import BuildSpec
from .graph import MS, GraphBuilder, WeightFile

log = logging.getLogger(__name__)
T = TensorProto
NEG = -1e9  # the bias of a masked key (exp underflows to 0 as with transformers' finfo.min)
FFN_ACTS = {"relu": ("Relu", "", {}), "gelu_new": ("FastGelu", MS, {}), "gelu_pytorch_tanh": ("FastGelu", MS, {}),
            "gelu": ("Gelu", MS, {}), "silu": ("QuickGelu", MS, {"alpha": 1.0})}
ATTN = ("q", "k", "v", "o")


def _w(module) -> np.ndarray:
    """A T5 projection's weight ``(out, in)`` (no bias), under an adapter's wrapper too."""
    return to_numpy(getattr(module, "base_layer", module).weight)


def bias_table(attn, max_distance: int) -> np.ndarray:
    """``[2 * max_distance + 1, heads]``: the relative bias of each distance ``key - query`` in
    ``[-max_distance, max_distance]`` (beyond it the bucket no longer changes), from the module's
    own bucket function and table."""
    import torch

    rel = torch.arange(-max_distance, max_distance + 1)
    buckets = attn._relative_position_bucket(rel, bidirectional=not attn.is_decoder,
                                             num_buckets=attn.relative_attention_num_buckets,
                                             max_distance=attn.relative_attention_max_distance)
    return to_numpy(attn.relative_attention_bias.weight)[buckets.numpy()]


class Seq2SeqBuilder:
    """Reads an ``MTAModel`` of a T5 (or a plain ``T5ForConditionalGeneration``) once and writes
    its encoder and decoder graphs."""

    def __init__(self, model, max_positions: int = 2048):
        from alter_edge.inject import MTAModel

        self.mta = model if isinstance(model, MTAModel) else None
        base = model.base if self.mta is not None else model
        cfg = self.cfg = base.config
        if cfg.model_type != "t5":
            raise ConfigError(f"the encoder-decoder graph builder writes t5, not {cfg.model_type!r}")
        self.heads, self.d_kv, self.eps = int(cfg.num_heads), int(cfg.d_kv), float(cfg.layer_norm_epsilon)
        self.inner = self.heads * self.d_kv
        self.enc, self.dec = list(base.encoder.block), list(base.decoder.block)
        self.enc_norm, self.dec_norm = to_numpy(base.encoder.final_layer_norm.weight), \
            to_numpy(base.decoder.final_layer_norm.weight)
        self.embed = to_numpy(base.shared.weight)
        head = base.get_output_embeddings()
        self.tied = head.weight.data_ptr() == base.shared.weight.data_ptr()
        self.lm_head = self.embed if self.tied else to_numpy(head.weight)
        self.vocab = self.lm_head.shape[0]
        self.scale_out = bool(getattr(cfg, "scale_decoder_outputs", getattr(cfg, "tie_word_embeddings", True)))
        self.max_distance = int(cfg.relative_attention_max_distance)
        self.enc_bias = bias_table(self.enc[0].layer[0].SelfAttention, self.max_distance)
        self.dec_bias = bias_table(self.dec[0].layer[0].SelfAttention, self.max_distance)
        self.layout = Seq2SeqLayout(KVLayout(len(self.dec), self.heads, self.d_kv, max_sequence_length=max_positions))
        self.kv = self.layout.kv
        self.decoder_start_token_id = int(cfg.decoder_start_token_id)
        if cfg.dense_act_fn not in FFN_ACTS:
            raise ConfigError(f"T5 FFN activation {cfg.dense_act_fn!r} is not built; supported: {', '.join(FFN_ACTS)}")
        self.act = FFN_ACTS[cfg.dense_act_fn]
        self.gated = bool(cfg.is_gated_act)
        self.adapters: dict[tuple[str, int], object] = {}
        if self.mta is not None:
            self._read_adapters()
        self.num_tasks = self.mta.cfg.num_tasks if self.mta is not None else 0

    def _read_adapters(self) -> None:
        if any(b.gate_weight is not None for b in self.mta.blocks.values()):
            raise ConfigError("a token-gated T5 checkpoint does not export: its decoder blocks' gates would "
                              "have to mix the cross cache per decoder token")
        mlp_names = tuple(self.mta.spec.seq2seq.mlp_names)
        for stack, blocks in (("encoder", self.enc), ("decoder", self.dec)):
            for i in self.mta.adapted_by_stack[stack]:
                layer = blocks[i].layer
                projections = {n: getattr(layer[0].SelfAttention, n) for n in ATTN}
                if stack == "decoder":
                    projections.update({f"cross.{n}": getattr(layer[1].EncDecAttention, n) for n in ATTN})
                self.adapters[(stack, i)] = adapter_for(self.mta.blocks[f"{stack}_{i}"], projections, mlp_names)

    # -- pieces -------------------------------------------------------------------------
    def _skip_norm(self, g: GraphBuilder, x: str, resid: str, w: np.ndarray) -> tuple[str, str]:
        """``resid + x`` and its RMSNorm."""
        outs = [g.fresh("normed"), "", "", g.fresh("resid")]
        res = g.op("SkipSimplifiedLayerNormalization", [x, resid, g.const(w, "ln")], outputs=outs, domain=MS,
                   epsilon=self.eps)
        return res[0], res[3]

    def _project(self, g: GraphBuilder, e: Emit, ad, key: str, names: tuple[str, ...], mods: list, x: str,
                 resid: str) -> str:
        """Projections ``mods`` (named ``names`` among the block's) stacked into one matmul on ``x``;
        through the block's adapter piece when it has one."""
        w = np.concatenate([_w(m) for m in mods], 0)
        widths = tuple(_w(m).shape[0] for m in mods)
        if ad is not None:
            return ad.project(g, e, key, names, w, widths, x, resid, None, key)
        return g.linear(x, w, key=key)

    def _ffn(self, g: GraphBuilder, mlp, key: str, x: str, project=None) -> str:
        """v1.0: ``wo(act(wi x))``; v1.1: ``wo(act(wi_0 x) * wi_1 x)``. ``project``: an adapter
        kind's way to emit a projection (default the base's own)."""
        if project is None:
            def project(_key, _names, w, _widths, xx, base_key, bias=None):
                return g.linear(xx, w, key=base_key, bias=bias)
        op, domain, attrs = self.act
        wo = _w(mlp.wo)
        if self.gated:
            w0, w1 = _w(mlp.wi_0), _w(mlp.wi_1)
            gu = project(f"{key}.gu", ("wi_0", "wi_1"), np.concatenate([w0, w1], 0), (w0.shape[0], w1.shape[0]), x,
                         f"{key}.gate_up")
            gate, up = g.op("Split", [gu, g.const(np.array([w0.shape[0], w1.shape[0]], np.int64), "split")],
                            outputs=2, axis=-1)
            h = g.op("Mul", [g.op(op, [gate], domain=domain, **attrs), up])
        else:
            wi = _w(mlp.wi)
            h = g.op(op, [project(f"{key}.up", ("wi",), wi, (wi.shape[0],), x, f"{key}.up")], domain=domain, **attrs)
        return project(f"{key}.dn", ("wo",), wo, (wo.shape[0],), h, f"{key}.down")

    def _block_ffn(self, g: GraphBuilder, e: Emit, stack: str, i: int, ff, x: str, resid: str) -> str:
        ad, key = self.adapters.get((stack, i)), f"{stack}.{i}"
        if ad is None:
            return self._ffn(g, ff.DenseReluDense, f"{key}.mlp", x)
        return ad.mlp(g, e, key, x, resid, lambda m, k, xx, project=None: self._ffn(g, m, k, xx, project=project))

    def _self_attention(self, g: GraphBuilder, e: Emit, stack: str, i: int, x: str, resid: str, bias: str,
                        past: tuple[str, str] | None = None) -> str:
        blocks = self.enc if stack == "encoder" else self.dec
        attn, ad = blocks[i].layer[0].SelfAttention, self.adapters.get((stack, i))
        qkv = self._project(g, e, ad, f"{stack}.{i}.qkv", ("q", "k", "v"), [attn.q, attn.k, attn.v], x, resid)
        q, k, v = g.op("Split", [qkv, g.const(np.array([self.inner] * 3, np.int64), "split")], outputs=3, axis=-1)
        if past is None:
            out = g.op("MultiHeadAttention", [q, k, v, "", "", bias], domain=MS, num_heads=self.heads, scale=1.0)
        else:
            outs = [g.fresh("attn"), self.kv.present_names[2 * i], self.kv.present_names[2 * i + 1]]
            out = g.op("MultiHeadAttention", [q, k, v, "", "", bias, *past], outputs=outs, domain=MS,
                       num_heads=self.heads, scale=1.0)[0]
        return self._project(g, e, ad, f"{stack}.{i}.o", ("o",), [attn.o], out, resid)

    def _cross_attention(self, g: GraphBuilder, e: Emit, i: int, x: str, resid: str, bias: str) -> str:
        attn, ad = self.dec[i].layer[1].EncDecAttention, self.adapters.get(("decoder", i))
        q = self._project(g, e, ad, f"decoder.{i}.cross_q", ("cross.q",), [attn.q], x, resid)
        k, v = self.layout.cross_names[2 * i], self.layout.cross_names[2 * i + 1]
        out = g.op("MultiHeadAttention", [q, k, v, "", "", bias], domain=MS, num_heads=self.heads, scale=1.0)
        return self._project(g, e, ad, f"decoder.{i}.cross_o", ("cross.o",), [attn.o], out, resid)

    def _cross_kv(self, g: GraphBuilder, e: Emit, i: int, enc_out: str) -> None:
        """Decoder layer ``i``'s cross k/v of the encoder output, as ``[b, heads, enc_seq, d_kv]``."""
        attn, ad = self.dec[i].layer[1].EncDecAttention, self.adapters.get(("decoder", i))
        kv = self._project(g, e, ad, f"decoder.{i}.cross_kv", ("cross.k", "cross.v"), [attn.k, attn.v], enc_out,
                           enc_out)
        shape = g.const(np.array([0, 0, self.heads, self.d_kv], np.int64), "heads")
        for t, name in zip(g.op("Split", [kv, g.const(np.array([self.inner] * 2, np.int64), "split")], outputs=2,
                                axis=-1), self.layout.cross_names[2 * i:2 * i + 2], strict=True):
            g.op("Transpose", [g.op("Reshape", [t, shape])], outputs=[name], perm=[0, 2, 1, 3])

    # -- the two graphs -----------------------------------------------------------------
    def build(self, path: Path, role: str, spec: BuildSpec, precision: str, weights: WeightFile | None,
              block_size: int = 32, accuracy_level: int | dict[int, int] = 4, prune_threshold: float = 1e-5,
              adapter_bits: int | None = None, int8_layout: str = "nbits", plan=None) -> dict:
        """Write the ``role`` ("encoder" | "decoder") graph of ``spec`` to ``path``; returns facts
        about it (as ``DecoderBuilder.build``)."""
        t0 = time.perf_counter()
        g = GraphBuilder("alter_edge_" + role, precision, block_size, weights, accuracy_level, adapter_bits,
                         int8_layout=int8_layout, plan=plan)
        multitask = spec.mode == "multitask" and self.mta is not None
        inputs = add_inputs(g, self.layout, role, multitask)
        e = Emit(spec.mode if self.mta is not None else "task", spec.task_id, inputs.get(TASK_IDS), prune_threshold)
        h, head = ends.embedding(self, g, inputs[INPUT_IDS], block_size)
        if role == "encoder":
            self._encoder(g, e, h, inputs[ATTENTION_MASK])
        else:
            x = self._decoder(g, e, h, inputs[INPUT_IDS], inputs[ATTENTION_MASK], inputs[ENCODER_ATTENTION_MASK])
            if self.scale_out:
                x = g.op("Mul", [x, g.const(np.float32(self.cfg.d_model ** -0.5), "out_scale")])
            g.linear(x, head, key="lm_head" if self.tied else "lm_head_untied", tied_rows=self.tied)
            g.nodes[-1].output[0] = LOGITS
        emit_mixtures(g, e)
        add_outputs(g, self.layout, role, self.vocab)
        facts = g.save(path)
        if g.matrix_bits:
            facts["matrix_bits"] = dict(sorted(g.matrix_bits.items()))
        facts["seconds"] = round(time.perf_counter() - t0, 2)
        log.info("built %s (%s %s, %s): %d nodes", Path(path).name, role, spec.mode, precision, facts["nodes"])
        return facts

    def _encoder(self, g: GraphBuilder, e: Emit, h: str, mask: str) -> None:
        bias = encoder_bias(g, self.enc_bias, self.max_distance, mask)
        first = to_numpy(self.enc[0].layer[0].layer_norm.weight)
        resid, x = h, g.op("SimplifiedLayerNormalization", [h, g.const(first, "ln")], epsilon=self.eps, axis=-1)
        for i, blk in enumerate(self.enc):
            a = self._self_attention(g, e, "encoder", i, x, resid, bias)
            x, resid_mid = self._skip_norm(g, a, resid, to_numpy(blk.layer[1].layer_norm.weight))
            m = self._block_ffn(g, e, "encoder", i, blk.layer[1], x, resid)
            nxt = to_numpy(self.enc[i + 1].layer[0].layer_norm.weight) if i + 1 < len(self.enc) else self.enc_norm
            x, resid = self._skip_norm(g, m, resid_mid, nxt)
        for i in range(len(self.dec)):
            self._cross_kv(g, e, i, x)

    def _decoder(self, g: GraphBuilder, e: Emit, h: str, ids: str, mask: str, enc_mask: str) -> str:
        self_bias = decoder_bias(g, self.dec_bias, self.max_distance, ids, mask)
        cross_bias = cross_mask_bias(g, ids, enc_mask)
        first = to_numpy(self.dec[0].layer[0].layer_norm.weight)
        resid, x = h, g.op("SimplifiedLayerNormalization", [h, g.const(first, "ln")], epsilon=self.eps, axis=-1)
        for i, blk in enumerate(self.dec):
            past = self.kv.past_names[2 * i], self.kv.past_names[2 * i + 1]
            a = self._self_attention(g, e, "decoder", i, x, resid, self_bias, past)
            x, resid = self._skip_norm(g, a, resid, to_numpy(blk.layer[1].layer_norm.weight))
            c = self._cross_attention(g, e, i, x, resid, cross_bias)
            x, resid_mid = self._skip_norm(g, c, resid, to_numpy(blk.layer[2].layer_norm.weight))
            m = self._block_ffn(g, e, "decoder", i, blk.layer[2], x, resid)
            nxt = to_numpy(self.dec[i + 1].layer[0].layer_norm.weight) if i + 1 < len(self.dec) else self.dec_norm
            x, resid = self._skip_norm(g, m, resid_mid, nxt)
        return x


# -- inputs, outputs, biases ------------------------------------------------------------------

def add_inputs(g: GraphBuilder, layout: Seq2SeqLayout, role: str, multitask: bool) -> dict[str, str]:
    """The role's inputs in the contract's order."""
    kv = layout.kv
    cache = (T.FLOAT, ["batch", kv.num_kv_heads, "past_seq", kv.head_dim])
    cross = (T.FLOAT, ["batch", kv.num_kv_heads, "enc_seq", kv.head_dim])
    if role == "encoder":
        shapes = {INPUT_IDS: ["batch", "enc_seq"], ATTENTION_MASK: ["batch", "enc_seq"]}
        names = layout.encoder_input_names(multitask)
    else:
        shapes = {INPUT_IDS: ["batch", "seq"], ATTENTION_MASK: ["batch", "total_seq"],
                  ENCODER_ATTENTION_MASK: ["batch", "enc_seq"]}
        names = layout.decoder_input_names(multitask)
    shapes[TASK_IDS] = ["batch"]
    crossing = set(layout.cross_names)
    return {n: g.add_input(n, *((T.INT64, shapes[n]) if n in shapes else cross if n in crossing else cache))
            for n in names}


def add_outputs(g: GraphBuilder, layout: Seq2SeqLayout, role: str, vocab: int) -> None:
    kv = layout.kv
    if role == "encoder":
        for n in layout.encoder_output_names():
            g.add_output(n, T.FLOAT, ["batch", kv.num_kv_heads, "enc_seq", kv.head_dim])
        return
    present = (T.FLOAT, ["batch", kv.num_kv_heads, "total_seq", kv.head_dim])
    for n in layout.decoder_output_names():
        g.add_output(n, *((T.FLOAT, ["batch", "seq", vocab]) if n == LOGITS else present))


def _i64(g: GraphBuilder, v, hint: str = "c") -> str:
    return g.const(np.array(v, np.int64), hint)


def _dim(g: GraphBuilder, x: str, axis: int) -> str:
    """``x.shape[axis]`` as an int64 scalar."""
    return g.op("Gather", [g.op("Shape", [x]), _i64(g, axis, "axis")], axis=0)


def _relative(g: GraphBuilder, table: np.ndarray, max_distance: int, rel: str) -> str:
    """The bias of distances ``rel`` (``[..., q, k]`` int64) from the table: ``[..., heads, q, k]``."""
    idx = g.op("Add", [g.op("Clip", [rel, _i64(g, -max_distance, "lo"), _i64(g, max_distance, "hi")]),
                       _i64(g, max_distance, "off")])
    return g.op("Gather", [g.const(table.astype(np.float32), "rel_bias"), idx], axis=0)  # [..., q, k, heads]


def _mask_bias(g: GraphBuilder, allowed: str) -> str:
    return g.op("Where", [allowed, g.const(np.float32(0.0), "zero_f"), g.const(np.float32(NEG), "neg")])


def encoder_bias(g: GraphBuilder, table: np.ndarray, max_distance: int, mask: str) -> str:
    """``[b, heads, s, s]``: bidirectional relative bias of positions ``0..s-1`` plus the padding mask."""
    s = _dim(g, mask, 1)
    pos = g.op("Range", [_i64(g, 0, "zero"), s, _i64(g, 1, "one")])
    rel = g.op("Sub", [g.op("Unsqueeze", [pos, _i64(g, [0], "ax0")]), g.op("Unsqueeze", [pos, _i64(g, [1], "ax1")])])
    b = g.op("Unsqueeze", [g.op("Transpose", [_relative(g, table, max_distance, rel)], perm=[2, 0, 1]),
                           _i64(g, [0], "ax0")])  # (1, H, S, S)
    keys = _mask_bias(g, g.op("Cast", [g.op("Unsqueeze", [mask, _i64(g, [1, 2], "ax12")])], to=T.BOOL))
    return g.op("Add", [b, keys])


def decoder_bias(g: GraphBuilder, table: np.ndarray, max_distance: int, ids: str, mask: str) -> str:
    """``[b, heads, seq, total]``: causal relative bias between positions (the running count of
    each row's mask ones, minus one) plus the mask: a key is seen when its mask is 1 and it is
    not after the query (by index: past + s)."""
    total, seq = _dim(g, mask, 1), _dim(g, ids, 1)
    kpos = g.op("Sub", [g.op("CumSum", [mask, _i64(g, 1, "ax")]), _i64(g, 1, "one")])  # (B, T)
    start = g.op("Unsqueeze", [g.op("Sub", [total, seq]), _i64(g, [0], "ax0")])
    qpos = g.op("Slice", [kpos, start, _i64(g, [2 ** 62], "end"), _i64(g, [1], "ax1")])  # (B, S)
    rel = g.op("Sub", [g.op("Unsqueeze", [kpos, _i64(g, [1], "ax1")]), g.op("Unsqueeze", [qpos, _i64(g, [2], "ax2")])])
    b = g.op("Transpose", [_relative(g, table, max_distance, rel)], perm=[0, 3, 1, 2])  # (B, H, S, T)
    kidx = g.op("Range", [_i64(g, 0, "zero"), total, _i64(g, 1, "one")])  # (T,)
    qidx = g.op("Range", [g.op("Sub", [total, seq]), total, _i64(g, 1, "one")])  # (S,)
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [kidx, _i64(g, [0], "ax0")]),
                                  g.op("Unsqueeze", [qidx, _i64(g, [1], "ax1")])])  # (S, T)
    keys = g.op("Cast", [g.op("Unsqueeze", [mask, _i64(g, [1], "ax1")])], to=T.BOOL)  # (B, 1, T)
    allowed = g.op("And", [causal, keys])  # (B, S, T)
    return g.op("Add", [b, g.op("Unsqueeze", [_mask_bias(g, allowed), _i64(g, [1], "ax1")])])


def cross_mask_bias(g: GraphBuilder, ids: str, enc_mask: str) -> str:
    """``[b, 1, seq, enc_seq]``: 0 where the encoder position is valid, very negative after."""
    keys = _mask_bias(g, g.op("Cast", [g.op("Unsqueeze", [enc_mask, _i64(g, [1, 2], "ax12")])], to=T.BOOL))
    shape = g.op("Concat", [g.op("Shape", [ids], end=1), _i64(g, [1], "one1"), g.op("Shape", [ids], start=1, end=2),
                            g.op("Shape", [enc_mask], start=1, end=2)], axis=0)
    return g.op("Expand", [keys, shape])


__all__ = ["Seq2SeqBuilder", "bias_table"]
