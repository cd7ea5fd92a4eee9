"""Build the ONNX graph of an MTA checkpoint straight from its tensors (bundle format v2).

The graph is written op by op with onnxruntime's fused contrib operators, nothing traced:

- embedding: ``Gather`` (fp32) or ``GatherBlockQuantized`` reading the quantized lm_head bytes
  when the embedding is tied;
- per block: ``SkipSimplifiedLayerNormalization`` (residual add + RMSNorm), one packed q/k/v
  matmul, ``GroupQueryAttention`` (rotary inside, KV cache in place), the o projection, one
  packed gate/up matmul, ``QuickGelu(alpha=1)`` (= SiLU) times up, the down projection;
- matmuls: ``MatMul`` on the transposed fp32 weight (fp32), ``MatMulNBits`` (int8 / int4, block-wise);
- adapters: the block's kind emits its piece (``export.adapters``).

Supported backbones: the Llama family (``llama``, ``mistral``, ``qwen2``, ``qwen3``). GPT-2 is
not built (docs/export.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto

from alter_edge.errors import ConfigError
from alter_edge.runtime.contract import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    TASK_IDS,
    KVLayout,
)

from .adapters import Emit, FfnKind, LoraKind, _np, adapter_for, emit_mixtures
from .graph import MS, GraphBuilder, WeightFile

log = logging.getLogger(__name__)

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")


def kv_layout(config) -> KVLayout:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return KVLayout(int(config.num_hidden_layers), int(getattr(config, "num_key_value_heads", None) or heads),
                    int(head_dim))


def _base_layer(module):
    return getattr(module, "base_layer", module)


def _wb(module) -> tuple[np.ndarray, np.ndarray | None]:
    m = _base_layer(module)
    return _np(m.weight), (None if getattr(m, "bias", None) is None else _np(m.bias))


@dataclass
class BuildSpec:
    """One graph to build: ``mode`` multitask | task | merged (``task_id`` for the last two)."""

    mode: str = "multitask"
    task_id: int | None = None


class DecoderBuilder:
    """Reads a ``MTAModel`` (or a plain Llama-family causal LM) once and writes graphs of it."""

    def __init__(self, model, max_positions: int | None = None):
        from alter_edge.inject import MTAModel

        self.mta = model if isinstance(model, MTAModel) else None
        base = model.base if self.mta is not None else model
        cfg = base.config
        if cfg.model_type not in SUPPORTED:
            raise ConfigError(f"the graph builder supports the model types {', '.join(SUPPORTED)}, "
                              f"not {cfg.model_type!r}")
        self.cfg = cfg
        self.kv = kv_layout(cfg)
        self.heads = int(cfg.num_attention_heads)
        self.eps = float(cfg.rms_norm_eps)
        self.window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        backbone = base.base_model
        self.layers = list(backbone.layers)
        self.embed = _np(backbone.embed_tokens.weight)
        self.final_norm = _np(backbone.norm.weight)
        head = base.get_output_embeddings().weight
        self.tied = head.data_ptr() == backbone.embed_tokens.weight.data_ptr()
        self.lm_head = self.embed if self.tied else _np(head)
        self.vocab = self.lm_head.shape[0]
        # rotary positions the graph covers: the model's own limit, at least 2048, at most 8192
        n_pos = int(max_positions or min(max(getattr(cfg, "max_position_embeddings", 2048), 2048), 8192))
        self.cos, self.sin = self._rotary(backbone, n_pos)
        self.kv = KVLayout(self.kv.num_layers, self.kv.num_kv_heads, self.kv.head_dim, max_sequence_length=n_pos)
        self.adapters = {}
        if self.mta is not None:
            spec = self.mta.spec
            for i in self.mta.adapted_layers:
                layer, block = self.layers[i], self.mta.blocks[str(i)]
                attn = getattr(layer, spec.attn)
                projections = {n: getattr(attn, n) for n in spec.attn_targets}
                if block.kind == "lora":
                    projections.update({n: getattr(block.mlp, n) for n in spec.lora_targets})
                self.adapters[i] = adapter_for(block, projections)
        self.num_tasks = self.mta.cfg.num_tasks if self.mta is not None else 0
        self.token_gate = any(a.mix.gate is not None for a in self.adapters.values())

    def _rotary(self, backbone, n: int) -> tuple[np.ndarray, np.ndarray]:
        """cos/sin caches ``[n, rotary_dim / 2]`` from the model's own rotary module, so every
        rope variant it implements (scaling types, attention factors) is what the graph uses."""
        import torch

        rot = backbone.rotary_emb
        x = torch.zeros(1, 1, dtype=torch.float32)
        with torch.no_grad():
            cos, sin = rot(x, torch.arange(n)[None, :])
        half = cos.shape[-1] // 2
        return _np(cos[0, :, :half]), _np(sin[0, :, :half])

    # -- pieces -------------------------------------------------------------------------
    def _mlp(self, g: GraphBuilder, mlp, key: str, x: str, merged: dict | None = None, project=None) -> str:
        """Packed gate/up, SiLU(gate) * up, down. ``merged``: weights replacing the module's (inline);
        ``project(key, names, w, widths, x, base_key)``: a projection with an adapter's delta."""
        wg, wu, wd = (_wb(getattr(mlp, n))[0] for n in ("gate_proj", "up_proj", "down_proj"))
        if merged:
            wg, wu, wd = merged.get("gate_proj", wg), merged.get("up_proj", wu), merged.get("down_proj", wd)
        k = None if merged else key
        if project is None:
            def project(_key, _names, w, _widths, xx, base_key):
                return g.linear(xx, w, key=base_key)
        gu = project(f"{key}.gu", GATE_UP, np.concatenate([wg, wu], 0), (wg.shape[0], wu.shape[0]), x,
                     k and f"{k}.gate_up")
        gate, up = g.op("Split", [gu, g.const(np.array([wg.shape[0], wu.shape[0]], np.int64), "split")],
                        outputs=2, axis=-1)
        h = g.op("Mul", [g.op("QuickGelu", [gate], domain=MS, alpha=1.0), up])
        return project(f"{key}.dn", ("down_proj",), wd, (wd.shape[0],), h, k and f"{k}.down")

    def _attention(self, g: GraphBuilder, e: Emit, i: int, x: str, resid: str, seqlens: str, total: str,
                   cos: str, sin: str) -> str:
        layer, ad = self.layers[i], self.adapters.get(i)
        attn = layer.self_attn
        lora = ad if isinstance(ad, LoraKind) else None
        merged = e.mode == "merged" and lora is not None
        ws, bs = zip(*(_wb(getattr(attn, n)) for n in QKV), strict=True)
        if merged:
            ws = tuple(lora.merged_weight(n, w, e.task_id) if n in lora.lora else w
                       for n, w in zip(QKV, ws, strict=True))
        widths = tuple(w.shape[0] for w in ws)
        bias = None if bs[0] is None else np.concatenate(bs)
        key = None if merged else f"layers.{i}.qkv"
        if lora is not None:
            qkv = lora.project(g, e, f"layers.{i}.qkv", QKV, np.concatenate(ws, 0), widths, x, resid, bias, key)
        else:
            qkv = g.linear(x, np.concatenate(ws, 0), key=key, bias=bias)
        i_name = self.kv.past_names[2 * i], self.kv.past_names[2 * i + 1]
        o_name = self.kv.present_names[2 * i], self.kv.present_names[2 * i + 1]
        attrs = dict(num_heads=self.heads, kv_num_heads=self.kv.num_kv_heads, do_rotary=1, rotary_interleaved=0,
                     scale=float(getattr(attn, "scaling", self.kv.head_dim ** -0.5)))
        if self.window:
            attrs["local_window_size"] = int(self.window)
        if getattr(attn, "q_norm", None) is not None:
            # qwen3: RMSNorm of each head's q and k before rotary (the CPU kernel has no such prologue)
            q, k, v = g.op("Split", [qkv, g.const(np.array(widths, np.int64), "split")], outputs=3, axis=-1)
            heads = g.const(np.array([0, 0, -1, self.kv.head_dim], np.int64), "heads")
            flat = g.const(np.array([0, 0, -1], np.int64), "flat")
            eps = float(attn.q_norm.variance_epsilon)
            q, k = (g.op("Reshape", [g.op("SimplifiedLayerNormalization", [
                g.op("Reshape", [t, heads]), g.const(_np(w), "qk_norm")], epsilon=eps, axis=-1), flat])
                for t, w in ((q, attn.q_norm.weight), (k, attn.k_norm.weight)))
            ins = [q, k, v, *i_name, seqlens, total, cos, sin]
        else:
            ins = [qkv, "", "", *i_name, seqlens, total, cos, sin]
        out = g.op("GroupQueryAttention", ins, outputs=[g.fresh("attn"), *o_name], domain=MS, **attrs)[0]
        wo, bo = _wb(attn.o_proj)
        if merged and "o_proj" in lora.lora:
            wo = lora.merged_weight("o_proj", wo, e.task_id)
        okey = None if merged else f"layers.{i}.o"
        if lora is not None:
            return lora.project(g, e, f"layers.{i}.o", ("o_proj",), wo, (wo.shape[0],), out, resid, bo, okey)
        return g.linear(out, wo, key=okey, bias=bo)

    def _block_mlp(self, g: GraphBuilder, e: Emit, i: int, x: str, resid: str) -> str:
        layer, ad = self.layers[i], self.adapters.get(i)
        key = f"layers.{i}"
        mlp = layer.mlp
        if ad is None:
            return self._mlp(g, mlp, f"{key}.mlp", x)
        if isinstance(ad, LoraKind):
            merged = None
            if e.mode == "merged":
                merged = {n: ad.merged_weight(n, _wb(getattr(mlp.mlp, n))[0], e.task_id)
                          for n in ("gate_proj", "up_proj", "down_proj") if n in ad.lora}
            if merged is not None:
                return self._mlp(g, mlp.mlp, f"{key}.mlp", x, merged)
            return self._mlp(g, mlp.mlp, f"{key}.mlp", x, project=lambda k, names, w, widths, xx, base_key:
                             ad.project(g, e, k, names, w, widths, xx, resid, base_key=base_key))
        if e.mode == "merged":
            raise ConfigError(f"a merged single-task graph needs lora adapters; this checkpoint's are {ad.name!r} "
                              "(use the per-task graph, which prunes and folds them)")
        return ad.mlp(g, e, key, x, resid, lambda m, k, xx: self._mlp(g, m, k, xx))

    # -- the graph ----------------------------------------------------------------------
    def build(self, path: Path, spec: BuildSpec, precision: str, weights: WeightFile | None,
              block_size: int = 32, accuracy_level: int = 4, prune_threshold: float = 1e-5,
              adapter_bits: int | None = None) -> dict:
        """Write one graph to ``path``; returns facts about it (nodes, operators, seconds)."""
        t0 = time.perf_counter()
        multitask = spec.mode == "multitask" and self.mta is not None
        if spec.mode != "multitask" and self.token_gate:
            raise ConfigError("a token-gated checkpoint's mixture changes per token: it builds as the "
                              "multi-task graph only")
        g = GraphBuilder("alter_edge", precision, block_size, weights, accuracy_level, adapter_bits)
        T = TensorProto
        ids = g.add_input(INPUT_IDS, T.INT64, ["batch", "seq"])
        mask = g.add_input(ATTENTION_MASK, T.INT64, ["batch", "total_seq"])
        task_ids = g.add_input(TASK_IDS, T.INT64, ["batch"]) if multitask else None
        for name in self.kv.past_names:
            g.add_input(name, T.FLOAT, ["batch", self.kv.num_kv_heads, "past_seq", self.kv.head_dim])
        e = Emit(spec.mode if self.mta is not None else "task", spec.task_id, task_ids, prune_threshold)
        # seqlens_k = valid length - 1 per row, total_sequence_length = the mask's width (int32)
        one = g.const(np.array([1], np.int64), "one")
        seqlens = g.op("Cast", [g.op("Sub", [g.op("ReduceSum", [mask, one], keepdims=0), one])], to=T.INT32)
        total = g.op("Cast", [g.op("Gather", [g.op("Shape", [mask]), g.const(np.array(1, np.int64), "idx1")],
                                   axis=0)], to=T.INT32)
        cos, sin = g.shared("rotary.cos", self.cos), g.shared("rotary.sin", self.sin)
        # embedding (tied: the quantized lm_head's bytes, viewed as [vocab, hidden * bits / 8])
        if g.bits:
            shared_head = self.tied and self.embed.shape[1] % block_size == 0
            key = "lm_head" if shared_head else "embed"
            q = g.quantized(self.embed, g.bits, key)
            data = g.shared(f"{key}.q", q.data, view=(self.vocab, q.data.shape[1] * q.data.shape[2]))
            scales = g.shared(f"{key}.scales", q.scales.reshape(-1), view=q.scales.shape)
            h = g.op("GatherBlockQuantized", [data, ids, scales], domain=MS, bits=g.bits, block_size=block_size,
                     quantize_axis=1, gather_axis=0)
            head = q if shared_head else self.lm_head
        else:
            h = g.op("Gather", [g.shared("lm_head" if self.tied else "embed", self.embed), ids], axis=0)
            head = self.embed if self.tied else self.lm_head
        resid = h
        x = g.op("SimplifiedLayerNormalization", [h, g.const(_np(self.layers[0].input_layernorm.weight), "ln")],
                 epsilon=self.eps, axis=-1)
        for i, layer in enumerate(self.layers):
            a = self._attention(g, e, i, x, resid, seqlens, total, cos, sin)
            x, resid_mid = self._skip_norm(g, a, resid, layer.post_attention_layernorm.weight)
            m = self._block_mlp(g, e, i, x, resid)
            nxt = self.layers[i + 1].input_layernorm.weight if i + 1 < len(self.layers) else None
            x, resid = self._skip_norm(g, m, resid_mid, nxt, final=nxt is None)
        emit_mixtures(g, e)
        # logits only at each row's last valid position of this step: min(seqlens_k, seq - 1) is
        # len - 1 in a right-padded prompt and 0 in a one-token step
        last_seq = g.op("Sub", [g.op("Gather", [g.op("Shape", [ids]), g.const(np.array(1, np.int64), "idx1")],
                                     axis=0), g.const(np.array(1, np.int64), "one_s")])
        pos = g.op("Min", [g.op("Cast", [seqlens], to=T.INT64), last_seq])
        x = g.op("GatherND", [x, g.op("Unsqueeze", [pos, g.const(np.array([1], np.int64), "ax1")])], batch_dims=1)
        x = g.op("Unsqueeze", [x, g.const(np.array([1], np.int64), "ax1")])  # (B, 1, H)
        logits = g.linear(x, head, key="lm_head" if self.tied else "lm_head_untied", tied_rows=self.tied)
        g.op("Identity", [logits], outputs=[LOGITS])
        g.add_output(LOGITS, T.FLOAT, ["batch", 1, self.vocab])
        for name in self.kv.present_names:
            g.add_output(name, T.FLOAT, ["batch", self.kv.num_kv_heads, "total_seq", self.kv.head_dim])
        facts = g.save(path)
        facts["seconds"] = round(time.perf_counter() - t0, 2)
        log.info("built %s (%s, %s): %d nodes in %.1fs", Path(path).name, spec.mode, precision, facts["nodes"],
                 facts["seconds"])
        return facts

    def _skip_norm(self, g: GraphBuilder, x: str, resid: str, weight, final: bool = False) -> tuple[str, str]:
        w = _np(weight) if weight is not None else self.final_norm
        outs = [g.fresh("normed"), "", "", g.fresh("resid")]
        res = g.op("SkipSimplifiedLayerNormalization", [x, resid, g.const(w, "ln")], outputs=outs, domain=MS,
                   epsilon=self.eps)
        return res[0], res[3]


__all__ = ["BuildSpec", "DecoderBuilder", "FfnKind", "kv_layout"]
