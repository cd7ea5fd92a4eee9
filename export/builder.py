"""Build the ONNX graph of an MTA checkpoint straight from its tensors (bundle format v2).

The graph is written op by op with onnxruntime's fused contrib operators, nothing traced:

- embedding: ``Gather`` (fp32) or ``GatherBlockQuantized`` reading the quantized lm_head bytes
  when the embedding is tied; a scale (Gemma, Granite) or learned positions (GPT-2) after it;
- per block: ``SkipSimplifiedLayerNormalization`` (residual add + RMSNorm; ``SkipLayerNormalization``
  for LayerNorm families), one packed q/k/v matmul, ``GroupQueryAttention`` (rotary inside, KV
  cache in place), the o projection, one packed gate/up matmul, the activation of gate times up,
  the down projection (or up, activation, down for a plain MLP);
- matmuls: ``MatMul`` on the transposed fp32 weight (fp32), ``MatMulNBits`` (int8 / int4, block-wise);
- adapters: the block's kind emits its piece (``export.adapters``).

What differs between the supported families (``llama``, ``mistral``, ``qwen2``, ``qwen3``,
``gemma3_text``, ``phi3``, ``gpt2``, ``granite``, ``olmo2``) is a short description of each in
``alter_edge.families`` (docs/base-models.md).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alter_edge.errors import ConfigError
from alter_edge.families import FAMILIES, SUPPORTED, Family
from alter_edge.kinds.base import to_numpy
from alter_edge.runtime.contract import ATTENTION_MASK, INPUT_IDS, TASK_IDS, KVLayout

from . import ends
from .adapters import Emit, adapter_for, emit_mixtures
from .graph import MS, GraphBuilder, WeightFile

log = logging.getLogger(__name__)

# the activations a family's MLP uses, by transformers' names: (op, domain, attributes)
ACTIVATIONS = {
    "silu": ("QuickGelu", MS, {"alpha": 1.0}),  # x * sigmoid(x)
    "swish": ("QuickGelu", MS, {"alpha": 1.0}),
    "gelu_pytorch_tanh": ("FastGelu", MS, {}),  # the tanh approximation
    "gelu_new": ("FastGelu", MS, {}),
    "gelu_fast": ("FastGelu", MS, {}),
    "gelu": ("Gelu", MS, {}),  # erf
}


def kv_layout(config) -> KVLayout:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return KVLayout(int(config.num_hidden_layers), int(getattr(config, "num_key_value_heads", None) or heads),
                    int(head_dim))


def _base_layer(module):
    return getattr(module, "base_layer", module)


def _wb(module) -> tuple[np.ndarray, np.ndarray | None]:
    """A projection's weight ``(out, in)`` and bias (a GPT-2 ``Conv1D`` stores ``(in, out)``)."""
    m = _base_layer(module)
    w = to_numpy(m.weight)
    if hasattr(m, "nf"):  # transformers' Conv1D
        w = np.ascontiguousarray(w.T)
    return w, (None if getattr(m, "bias", None) is None else to_numpy(m.bias))


def family_of(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ConfigError(f"the graph builder supports the model types {', '.join(SUPPORTED)}, "
                          f"not {model_type!r}")
    return FAMILIES[model_type]


@dataclass
class BuildSpec:
    """One graph to build: ``mode`` multitask | task | merged (``task_id`` for the last two)."""

    mode: str = "multitask"
    task_id: int | None = None


class DecoderBuilder:
    """Reads a ``MTAModel`` (or a plain causal LM of a supported family) once and writes graphs
    of it. What differs between families is their description (``alter_edge.families``)."""

    def __init__(self, model, max_positions: int | None = None):
        from alter_edge.inject import MTAModel

        self.mta = model if isinstance(model, MTAModel) else None
        base = model.base if self.mta is not None else model
        cfg = base.config
        self.fam = fam = family_of(cfg.model_type)
        self.cfg = cfg
        self.kv = kv_layout(cfg)
        self.heads = int(cfg.num_attention_heads)
        self.eps = float(getattr(cfg, fam.eps))
        self.window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        backbone = base.base_model
        self.layers = list(getattr(backbone, fam.layers))
        emb = getattr(backbone, fam.embed)
        self.embed = to_numpy(emb.weight)
        self.final_norm = self._norm_weights(getattr(backbone, fam.final_norm))
        head = base.get_output_embeddings()
        self.tied = head.weight.data_ptr() == emb.weight.data_ptr()
        self.lm_head = self.embed if self.tied else to_numpy(head.weight)
        self.head_bias = None if getattr(head, "bias", None) is None else to_numpy(head.bias)
        self.vocab = self.lm_head.shape[0]
        # positions the graph covers: the model's own limit, at least 2048, at most 8192 (a learned
        # position table: at most its rows)
        n_pos = int(max_positions or min(max(getattr(cfg, "max_position_embeddings", 2048), 2048), 8192))
        self.positions = None
        self.rotary: dict[str | None, tuple[np.ndarray, np.ndarray]] = {}
        if fam.rotary:
            self.rotary = self._rotary(backbone, n_pos)
        else:
            table = to_numpy(getattr(backbone, fam.positions).weight)
            n_pos = min(n_pos, table.shape[0])
            self.positions = np.ascontiguousarray(table[:n_pos])
        self.kv = KVLayout(self.kv.num_layers, self.kv.num_kv_heads, self.kv.head_dim, max_sequence_length=n_pos)
        self.embed_scale = self._embed_scale(emb)
        self.residual_multiplier = self._scalar(fam.residual_multiplier)
        self.logits_divisor = self._scalar(fam.logits_divisor)
        self.logit_softcap = self._scalar(fam.logit_softcap)
        self.adapters = {}
        if self.mta is not None:
            spec = self.mta.spec
            for i in self.mta.adapted_layers:
                layer, block = self.layers[i], self.mta.blocks[str(i)]
                attn = getattr(layer, spec.attn)
                projections = {self._attn_key(n): getattr(attn, n) for n in spec.attn_targets}
                self.adapters[i] = adapter_for(block, projections, self.fam.mlp_names)
        self.num_tasks = self.mta.cfg.num_tasks if self.mta is not None else 0
        self.token_gate = any(a.mix.gate is not None for a in self.adapters.values())

    # -- what the model holds -------------------------------------------------------------
    def _rotary(self, backbone, n: int) -> dict[str | None, tuple[np.ndarray, np.ndarray]]:
        """cos/sin caches ``[n, rotary_dim / 2]`` from the model's own rotary module, so every
        rope variant it implements (scaling types, attention factors, partial rotary) is what the
        graph uses; one pair per layer type where the module takes one (Gemma 3: local/global)."""
        import inspect

        import torch

        rot = backbone.rotary_emb
        x = torch.zeros(1, 1, dtype=torch.float32)
        types = [None]
        if "layer_type" in inspect.signature(rot.forward).parameters:
            types = sorted(set(self.cfg.layer_types))
        out = {}
        with torch.no_grad():
            for t in types:
                cos, sin = rot(x, torch.arange(n)[None, :]) if t is None else rot(x, torch.arange(n)[None, :], t)
                half = cos.shape[-1] // 2
                out[t] = to_numpy(cos[0, :, :half]), to_numpy(sin[0, :, :half])
        return out

    def _scalar(self, key: str | None) -> float | None:
        v = getattr(self.cfg, key, None) if key else None
        return None if v is None else float(v)

    def _embed_scale(self, emb) -> np.float32 | None:
        """Gemma: the embedding module's ``embed_scale`` in the embedding's dtype (as its forward
        applies it); Granite: ``embedding_multiplier``."""
        key = self.fam.embed_scale
        if key is None:
            return None
        if key == "embed_scale":
            return np.float32(emb.embed_scale.to(emb.weight.dtype).float().item())
        return np.float32(getattr(self.cfg, key))

    def _norm_weights(self, module) -> tuple[np.ndarray, np.ndarray | None]:
        """(scale, bias) of a norm, as the graph's op multiplies: Gemma's ``1 + w``."""
        w = to_numpy(module.weight)
        if self.fam.norm == "rms1p":
            w = (1.0 + w).astype(np.float32)
        b = getattr(module, "bias", None)
        return w, (None if b is None else to_numpy(b))

    def _layer_norm(self, layer, name: str | None) -> tuple[np.ndarray, np.ndarray | None] | None:
        return None if name is None else self._norm_weights(getattr(layer, name))

    def _attn_key(self, name: str) -> str:
        """An attention projection's name among the block's adapted projections (GPT-2's
        attention and MLP both have a ``c_proj``)."""
        return f"attn.{name}" if name in self.fam.mlp_names else name

    def _window(self, attn) -> int | None:
        if self.fam.window == "layer":
            return getattr(attn, "sliding_window", None)
        return self.window

    # -- pieces -------------------------------------------------------------------------
    def _norm(self, g: GraphBuilder, x: str, wb: tuple[np.ndarray, np.ndarray | None], eps: float | None = None,
              hint: str = "ln") -> str:
        w, b = wb
        eps = self.eps if eps is None else eps
        if self.fam.norm == "layer":
            return g.op("LayerNormalization", [x, g.const(w, hint), g.const(b, hint + "_b")], epsilon=eps, axis=-1)
        return g.op("SimplifiedLayerNormalization", [x, g.const(w, hint)], epsilon=eps, axis=-1)

    def _skip_norm(self, g: GraphBuilder, x: str, resid: str, wb) -> tuple[str, str]:
        """``resid + x`` and its norm (``wb`` None: the sum only)."""
        if wb is None:
            s = g.op("Add", [resid, x])
            return s, s
        w, b = wb
        outs = [g.fresh("normed"), "", "", g.fresh("resid")]
        if self.fam.norm == "layer":
            res = g.op("SkipLayerNormalization", [x, resid, g.const(w, "ln"), g.const(b, "ln_b")], outputs=outs,
                       domain=MS, epsilon=self.eps)
        else:
            res = g.op("SkipSimplifiedLayerNormalization", [x, resid, g.const(w, "ln")], outputs=outs, domain=MS,
                       epsilon=self.eps)
        return res[0], res[3]

    def _branch_out(self, g: GraphBuilder, y: str, layer, norm: str | None) -> str:
        """A residual branch's output: its own norm (Gemma 3, OLMo 2), the residual multiplier (Granite)."""
        if norm is not None:
            y = self._norm(g, y, self._norm_weights(getattr(layer, norm)))
        if self.residual_multiplier is not None:
            y = g.op("Mul", [y, g.const(np.float32(self.residual_multiplier), "resid_mult")])
        return y

    def _act(self, g: GraphBuilder, x: str) -> str:
        name = getattr(self.cfg, self.fam.act)
        if name not in ACTIVATIONS:
            raise ConfigError(f"activation {name!r} is not built; supported: {', '.join(ACTIVATIONS)}")
        op, domain, attrs = ACTIVATIONS[name]
        return g.op(op, [x], domain=domain, **attrs)

    def _mlp(self, g: GraphBuilder, mlp, key: str, x: str, project=None) -> str:
        """Gated (packed gate/up, act(gate) * up, down) or plain (up, act, down).
        ``project(key, names, w, widths, x, base_key, bias)``: how a projection is emitted (an
        adapter kind's, with its delta or merged); default the base's own."""
        f = self.fam
        wb = {n: _wb(getattr(mlp, n)) for n in f.mlp_names}
        if project is None:
            def project(_key, _names, w, _widths, xx, base_key, bias=None):
                return g.linear(xx, w, key=base_key, bias=bias)
        wd, bd = wb[f.down]
        if not f.gated:
            (wu, bu), = (wb[n] for n in f.up)
            h = self._act(g, project(f"{key}.up", f.up, wu, (wu.shape[0],), x, f"{key}.up", bu))
            return project(f"{key}.dn", (f.down,), wd, (wd.shape[0],), h, f"{key}.down", bd)
        ws = [wb[n][0] for n in f.up]
        bs = [wb[n][1] for n in f.up]
        inter = sum(w.shape[0] for w in ws) // 2
        bias = None if bs[0] is None else np.concatenate(bs)
        gu = project(f"{key}.gu", f.up, np.concatenate(ws, 0), tuple(w.shape[0] for w in ws), x,
                     f"{key}.gate_up", bias)
        gate, up = g.op("Split", [gu, g.const(np.array([inter, inter], np.int64), "split")], outputs=2, axis=-1)
        h = g.op("Mul", [self._act(g, gate), up])
        return project(f"{key}.dn", (f.down,), wd, (wd.shape[0],), h, f"{key}.down", bd)

    def _attention(self, g: GraphBuilder, e: Emit, i: int, x: str, resid: str, seqlens: str, total: str,
                   rot: tuple[str, str] | None) -> str:
        f = self.fam
        layer, ad = self.layers[i], self.adapters.get(i)
        attn = getattr(layer, f.attn)
        names = tuple(self._attn_key(n) for n in f.qkv)
        ws, bs = zip(*(_wb(getattr(attn, n)) for n in f.qkv), strict=True)
        widths = tuple(w.shape[0] for w in ws)
        bias = None if bs[0] is None else np.concatenate(bs)
        key = f"layers.{i}.qkv"
        if ad is not None:
            qkv = ad.project(g, e, key, names, np.concatenate(ws, 0), widths, x, resid, bias, key)
        else:
            qkv = g.linear(x, np.concatenate(ws, 0), key=key, bias=bias)
        i_name = self.kv.past_names[2 * i], self.kv.past_names[2 * i + 1]
        o_name = self.kv.present_names[2 * i], self.kv.present_names[2 * i + 1]
        d = self.kv.head_dim
        attrs = dict(num_heads=self.heads, kv_num_heads=self.kv.num_kv_heads, do_rotary=int(rot is not None),
                     scale=float(getattr(attn, "scaling", d ** -0.5)))
        if rot is not None:
            attrs["rotary_interleaved"] = 0
        window = self._window(attn)
        if window:
            attrs["local_window_size"] = int(window)
        rot_ins = list(rot) if rot is not None else []
        if f.qk_norm is not None:
            # q/k RMSNorm before rotary, per head (qwen3, gemma3) or over the whole projection (olmo2)
            split = (self.heads * d, self.kv.num_kv_heads * d, self.kv.num_kv_heads * d)
            q, k, v = g.op("Split", [qkv, g.const(np.array(split, np.int64), "split")], outputs=3, axis=-1)
            eps = float(getattr(attn.q_norm, "variance_epsilon", getattr(attn.q_norm, "eps", self.eps)))
            if f.qk_norm == "head":
                heads = g.const(np.array([0, 0, -1, d], np.int64), "heads")
                flat = g.const(np.array([0, 0, -1], np.int64), "flat")
                q, k = (g.op("Reshape", [self._norm(g, g.op("Reshape", [t, heads]), self._norm_weights(m), eps,
                                                    "qk_norm"), flat]) for t, m in ((q, attn.q_norm), (k, attn.k_norm)))
            else:
                q, k = (self._norm(g, t, self._norm_weights(m), eps, "qk_norm")
                        for t, m in ((q, attn.q_norm), (k, attn.k_norm)))
            ins = [q, k, v, *i_name, seqlens, total, *rot_ins]
        else:
            ins = [qkv, "", "", *i_name, seqlens, total, *rot_ins]
        out = g.op("GroupQueryAttention", ins, outputs=[g.fresh("attn"), *o_name], domain=MS, **attrs)[0]
        oname = self._attn_key(f.o)
        wo, bo = _wb(getattr(attn, f.o))
        okey = f"layers.{i}.o"
        if ad is not None:
            return ad.project(g, e, okey, (oname,), wo, (wo.shape[0],), out, resid, bo, okey)
        return g.linear(out, wo, key=okey, bias=bo)

    def _block_mlp(self, g: GraphBuilder, e: Emit, i: int, x: str, resid: str) -> str:
        layer, ad = self.layers[i], self.adapters.get(i)
        key = f"layers.{i}"
        mlp = getattr(layer, self.fam.mlp)
        if ad is None:
            return self._mlp(g, mlp, f"{key}.mlp", x)
        return ad.mlp(g, e, key, x, resid, lambda m, k, xx, project=None: self._mlp(g, m, k, xx, project=project))

    # -- the graph ----------------------------------------------------------------------
    def build(self, path: Path, spec: BuildSpec, precision: str, weights: WeightFile | None,
              block_size: int = 32, accuracy_level: int | dict[int, int] = 4, prune_threshold: float = 1e-5,
              adapter_bits: int | None = None, int8_layout: str = "nbits", plan=None) -> dict:
        """Write one graph to ``path``; returns facts about it (nodes, operators, seconds, and each
        stored quantized matrix's bits). ``int8_layout``: "nbits" or "integer" (GraphBuilder);
        ``plan``: the quantizer (``export.quant.QuantPlan``)."""
        t0 = time.perf_counter()
        multitask = spec.mode == "multitask" and self.mta is not None
        if spec.mode != "multitask" and self.token_gate:
            raise ConfigError("a token-gated checkpoint's mixture changes per token: it builds as the "
                              "multi-task graph only")
        g = GraphBuilder("alter_edge", precision, block_size, weights, accuracy_level, adapter_bits,
                         int8_layout=int8_layout, plan=plan)
        inputs = ends.add_inputs(g, self.kv, multitask)
        ids = inputs[INPUT_IDS]
        e = Emit(spec.mode if self.mta is not None else "task", spec.task_id, inputs.get(TASK_IDS), prune_threshold)
        seqlens, total = ends.lengths(g, inputs[ATTENTION_MASK])
        rot = {}
        for t, (cos, sin) in self.rotary.items():
            name = "rotary" if t is None else f"rotary.{t}"
            rot[t] = g.shared(f"{name}.cos", cos), g.shared(f"{name}.sin", sin)
        h, head = ends.embedding(self, g, ids, block_size)
        if self.embed_scale is not None:
            h = g.op("Mul", [h, g.const(self.embed_scale, "embed_scale")])
        if self.positions is not None:  # learned positions (GPT-2)
            pos = ends.position_ids(g, ids, seqlens, total)
            h = g.op("Add", [h, g.op("Gather", [g.shared("positions", self.positions), pos], axis=0)])
        x = self._blocks(g, e, h, seqlens, total, rot)
        emit_mixtures(g, e)
        ends.add_outputs(g, self.kv, ends.last_logits(self, g, x, ids, seqlens, head), self.vocab)
        facts = g.save(path)
        if g.matrix_bits:
            facts["matrix_bits"] = dict(sorted(g.matrix_bits.items()))
        facts["seconds"] = round(time.perf_counter() - t0, 2)
        log.info("built %s (%s, %s): %d nodes in %.1fs", Path(path).name, spec.mode, precision, facts["nodes"],
                 facts["seconds"])
        return facts

    def _blocks(self, g: GraphBuilder, e: Emit, h: str, seqlens: str, total: str, rot: dict) -> str:
        """Every block on the embeddings ``h``; returns the final norm's output."""
        f = self.fam
        resid = h
        first = self._layer_norm(self.layers[0], f.attn_in)
        x = self._norm(g, h, first) if first is not None else h
        for i, layer in enumerate(self.layers):
            lt = self.cfg.layer_types[i] if None not in self.rotary and self.rotary else None
            a = self._attention(g, e, i, x, resid, seqlens, total, rot.get(lt))
            a = self._branch_out(g, a, layer, f.attn_out)
            x, resid_mid = self._skip_norm(g, a, resid, self._layer_norm(layer, f.mlp_in))
            m = self._block_mlp(g, e, i, x, resid)
            m = self._branch_out(g, m, layer, f.mlp_out)
            nxt = self._layer_norm(self.layers[i + 1], f.attn_in) if i + 1 < len(self.layers) else self.final_norm
            x, resid = self._skip_norm(g, m, resid_mid, nxt)
        return x


__all__ = ["SUPPORTED", "BuildSpec", "DecoderBuilder", "family_of", "kv_layout"]
