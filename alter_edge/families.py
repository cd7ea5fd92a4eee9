"""The one table of decoder families (torch-free): a small description of each, keyed by
``config.model_type``. The graph builder (``export.builder.DecoderBuilder``) reads all of it; the
MTA injection (``alter_edge.inject.ARCH_TABLE``) is derived from it (which modules hold the
blocks, the MLP and the attention, and their projections), so a family that trains is one that
exports. Module names are those of the family's transformers modeling file; numbers (epsilons,
multipliers, caps) are read from the model's config by key.

- ``norm``: ``rms`` (RMSNorm, ``x * w``), ``rms1p`` (Gemma's ``x * (1 + w)``) or ``layer``
  (LayerNorm with bias). Every norm of the family (blocks, q/k norms, final) is of that kind.
- a block's four norm slots: before attention (``attn_in``), on the attention's output
  (``attn_out``), before the MLP (``mlp_in``), on the MLP's output (``mlp_out``); None: absent
  (Llama: in + mlp_in; Gemma 3: all four; OLMo 2: the two output norms only).
- attention: its projections (one name: a fused q/k/v), the q/k norm (``head``: per head,
  ``full``: over the whole projection), rotary or learned positions, where the sliding
  window comes from (``config``: one window for every layer when the config asks for it;
  ``layer``: each attention module's own ``sliding_window``, None on global layers).
- MLP: ``gated`` (act(gate) * up, then down; one gate/up name: a fused projection) or
  ``plain`` (up, act, down), and the config key holding its activation.
- scalars: embedding scale (``embed_scale``: the embedding module's own ``embed_scale``
  buffer, cast to the embedding's dtype; ``embedding_multiplier``: a config key), the residual
  branch multiplier, the logits divisor, the final logit softcap (Gemma 3's attention takes no
  softcap: its modeling code never passes ``attn_logit_softcapping`` to the attention).
"""

from __future__ import annotations

from dataclasses import dataclass

QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")


@dataclass(frozen=True)
class Family:
    layers: str = "layers"
    embed: str = "embed_tokens"
    positions: str | None = None  # a learned position table (GPT-2: wpe); None: rotary
    final_norm: str = "norm"
    norm: str = "rms"
    eps: str = "rms_norm_eps"
    attn_in: str | None = "input_layernorm"
    attn_out: str | None = None
    mlp_in: str | None = "post_attention_layernorm"
    mlp_out: str | None = None
    attn: str = "self_attn"
    qkv: tuple[str, ...] = QKV
    o: str = "o_proj"
    qk_norm: str | None = None  # None | "head" | "full"
    window: str = "config"  # "config" | "layer"
    mlp: str = "mlp"
    gated: bool = True
    up: tuple[str, ...] = GATE_UP  # gated: gate and up (one name: fused [gate | up]); plain: the up projection
    down: str = "down_proj"
    act: str = "hidden_act"  # the config key of the MLP's activation
    embed_scale: str | None = None  # "embed_scale" (the module's buffer) or a config key
    residual_multiplier: str | None = None
    logits_divisor: str | None = None
    logit_softcap: str | None = None

    @property
    def rotary(self) -> bool:
        return self.positions is None

    @property
    def mlp_names(self) -> tuple[str, ...]:
        return (*self.up, self.down)

    @property
    def attn_names(self) -> tuple[str, ...]:
        return (*self.qkv, self.o)


_LLAMA = Family()
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": Family(qk_norm="head"),
    "gemma3_text": Family(norm="rms1p", attn_out="post_attention_layernorm", mlp_in="pre_feedforward_layernorm",
                          mlp_out="post_feedforward_layernorm", qk_norm="head", window="layer",
                          act="hidden_activation", embed_scale="embed_scale", logit_softcap="final_logit_softcapping"),
    "phi3": Family(qkv=("qkv_proj",), up=("gate_up_proj",)),
    "gpt2": Family(layers="h", embed="wte", positions="wpe", final_norm="ln_f", norm="layer", eps="layer_norm_epsilon",
                   attn_in="ln_1", mlp_in="ln_2", attn="attn", qkv=("c_attn",), o="c_proj", gated=False, up=("c_fc",),
                   down="c_proj", act="activation_function"),
    "granite": Family(embed_scale="embedding_multiplier", residual_multiplier="residual_multiplier",
                      logits_divisor="logits_scaling"),
    "olmo2": Family(attn_in=None, attn_out="post_attention_layernorm", mlp_in=None,
                    mlp_out="post_feedforward_layernorm", qk_norm="full"),
}
SUPPORTED = tuple(FAMILIES)


# -- encoder-decoder families (training only for now: the graph builder writes decoders) ------
@dataclass(frozen=True)
class Stack:
    """One stack of an encoder-decoder: where its blocks are and, inside a block, its FFN and
    attentions. Paths are dotted module paths (``layer.1.DenseReluDense``: T5's block holds its
    sub-layers in a ModuleList)."""

    name: str  # "encoder" | "decoder"
    layers: str  # from the model: the block list
    mlp: str  # from a block: the FFN module (MTA replaces it)
    attns: tuple[str, ...]  # from a block: its attention modules (self, and the decoder's cross)


@dataclass(frozen=True)
class Seq2SeqFamily:
    """An encoder-decoder family: MTA goes into the FFN of blocks of every stack.

    ``mlp_names``: the FFN's projections the projection-adapting kinds adapt, those present in
    a given model (T5 v1.0's ReLU ``wi``/``wo``; v1.1 / flan's gated-GELU ``wi_0``, ``wi_1``,
    ``wo``: the config's ``feed_forward_proj``)."""

    stacks: tuple[Stack, ...]
    mlp_names: tuple[str, ...]
    attn_names: tuple[str, ...]


T5 = Seq2SeqFamily(
    stacks=(Stack("encoder", "encoder.block", "layer.1.DenseReluDense", ("layer.0.SelfAttention",)),
            Stack("decoder", "decoder.block", "layer.2.DenseReluDense",
                  ("layer.0.SelfAttention", "layer.1.EncDecAttention"))),
    mlp_names=("wi", "wi_0", "wi_1", "wo"),
    attn_names=("q", "k", "v", "o"),
)
SEQ2SEQ_FAMILIES: dict[str, Seq2SeqFamily] = {"t5": T5}
TRAINS = SUPPORTED + tuple(SEQ2SEQ_FAMILIES)  # what `alter-edge train` takes; SUPPORTED: what exports too


def is_seq2seq(model_type: str) -> bool:
    return model_type in SEQ2SEQ_FAMILIES
