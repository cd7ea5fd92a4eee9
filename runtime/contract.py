"""The graph contract of bundle format v2, declared once (torch-free, onnx-free).

The exporter's graph builder writes graphs to this contract and the runtime reads them with
it; docs/bundle-format.md describes it for other languages.

One graph serves the prompt step and every decode step:

- ``input_ids`` int64 ``[batch, seq]``: new tokens; a prompt batch is **right-padded**.
- ``attention_mask`` int64 ``[batch, total_seq]``: 1 for every valid token so far (past and new),
  0 after; only its row sums and its width are read: ``seqlens_k = sum - 1`` (the position of
  each row's last valid token) and ``total_sequence_length = width``. Positions are implied:
  a prompt token at index ``j`` has position ``j``; a decode token of row ``b`` has position
  ``sum_b - 1``.
- ``task_ids`` int64 ``[batch]``: multi-task graphs only.
- ``past_key_values.{i}.key`` / ``.value`` float32 ``[batch, num_kv_heads, past_len, head_dim]``;
  outputs ``present.{i}.key`` / ``.value``. With IO binding the past and the present of a layer
  may be the same buffer of ``max_len`` positions (GroupQueryAttention writes each row's new
  entries at its own offset in place); without, present has ``total_seq`` positions.
- ``logits`` float32 ``[batch, 1, vocab]``: each row's last valid position of this step (its last
  prompt token in a right-padded prompt, the new token in a one-token step); no other position
  pays for the vocabulary projection.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTRACT = "gqa-right-pad"  # manifest "graph_contract": what this module describes
INPUT_IDS, ATTENTION_MASK, TASK_IDS, LOGITS = "input_ids", "attention_mask", "task_ids", "logits"
PAST_KEY, PAST_VALUE = "past_key_values.{i}.key", "past_key_values.{i}.value"
PRESENT_KEY, PRESENT_VALUE = "present.{i}.key", "present.{i}.value"


@dataclass(frozen=True)
class KVLayout:
    """Shape and names of the KV cache: one key and one value tensor per layer."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    past_key: str = PAST_KEY
    past_value: str = PAST_VALUE
    present_key: str = PRESENT_KEY
    present_value: str = PRESENT_VALUE
    max_sequence_length: int = 0  # positions the graph's rotary cache covers (0: not recorded)

    @property
    def past_names(self) -> tuple[str, ...]:  # key, value of layer 0, then layer 1, ...
        return tuple(p.format(i=i) for i in range(self.num_layers) for p in (self.past_key, self.past_value))

    @property
    def present_names(self) -> tuple[str, ...]:
        return tuple(p.format(i=i) for i in range(self.num_layers)
                     for p in (self.present_key, self.present_value))

    def input_names(self, multitask: bool) -> list[str]:
        return [INPUT_IDS, ATTENTION_MASK, *([TASK_IDS] if multitask else []), *self.past_names]

    def output_names(self) -> list[str]:
        return [LOGITS, *self.present_names]

    def to_dict(self) -> dict:
        return {"num_layers": self.num_layers, "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
                "past_key": self.past_key, "past_value": self.past_value,
                "present_key": self.present_key, "present_value": self.present_value,
                "dtype": "float32", "shape": ["batch", "num_kv_heads", "seq", "head_dim"],
                "shared_buffer": True, "max_sequence_length": self.max_sequence_length}

    @classmethod
    def from_dict(cls, d: dict) -> KVLayout:
        names = {k: d[k] for k in ("past_key", "past_value", "present_key", "present_value") if k in d}
        return cls(int(d["num_layers"]), int(d["num_kv_heads"]), int(d["head_dim"]), **names,
                   max_sequence_length=int(d.get("max_sequence_length", 0)))


# -- encoder-decoder (T5) bundles: two graphs per precision and task --------------------------
#
# The encoder graph runs once per prompt row:
#   inputs  input_ids int64 [batch, enc_seq] (right-padded), attention_mask int64 [batch, enc_seq],
#           task_ids int64 [batch] (multi-task graphs only)
#   outputs cross_key_values.{i}.key / .value float32 [batch, num_heads, enc_seq, head_dim]: each
#           decoder layer's cross-attention k/v projections of the encoder output, computed once.
# The decoder graph runs every decode step (MultiHeadAttention; the present self cache is the past
# concatenated with this step's entries, so it has past_len + seq positions):
#   inputs  input_ids int64 [batch, seq] (decoder tokens; the first step is decoder_start_token_id),
#           attention_mask int64 [batch, past_len + seq] (1 for every valid decoder position so far;
#           a row's positions are the running count of its ones, so holes left by refill are skipped),
#           encoder_attention_mask int64 [batch, enc_seq], task_ids int64 [batch] (multi-task only),
#           past_key_values.{i}.key / .value [batch, num_heads, past_len, head_dim],
#           cross_key_values.{i}.key / .value [batch, num_heads, enc_seq, head_dim]
#   outputs logits float32 [batch, seq, vocab] (every position of the step: label scoring reads them
#           all; a one-token decode step has seq = 1), present.{i}.key / .value.
SEQ2SEQ_CONTRACT = "t5-mha"
ENCODER_ATTENTION_MASK = "encoder_attention_mask"
CROSS_KEY, CROSS_VALUE = "cross_key_values.{i}.key", "cross_key_values.{i}.value"
ENCODER_ROLE, DECODER_ROLE = "encoder", "decoder"


@dataclass(frozen=True)
class Seq2SeqLayout:
    """Names and shapes of an encoder-decoder pair: the decoder's self cache (``kv``, MHA: its
    ``num_kv_heads`` is the head count) and the cross cache (one key and value per decoder layer,
    the encoder length as its sequence axis)."""

    kv: KVLayout
    cross_key: str = CROSS_KEY
    cross_value: str = CROSS_VALUE

    @property
    def cross_names(self) -> tuple[str, ...]:
        return tuple(p.format(i=i) for i in range(self.kv.num_layers) for p in (self.cross_key, self.cross_value))

    def encoder_input_names(self, multitask: bool) -> list[str]:
        return [INPUT_IDS, ATTENTION_MASK, *([TASK_IDS] if multitask else [])]

    def encoder_output_names(self) -> list[str]:
        return list(self.cross_names)

    def decoder_input_names(self, multitask: bool) -> list[str]:
        return [INPUT_IDS, ATTENTION_MASK, ENCODER_ATTENTION_MASK, *([TASK_IDS] if multitask else []),
                *self.kv.past_names, *self.cross_names]

    def decoder_output_names(self) -> list[str]:
        return self.kv.output_names()

    def to_dict(self) -> dict:
        return {"self": {**self.kv.to_dict(), "shared_buffer": False},
                "cross": {"cross_key": self.cross_key, "cross_value": self.cross_value, "dtype": "float32",
                          "shape": ["batch", "num_heads", "enc_seq", "head_dim"]}}

    @classmethod
    def from_dict(cls, d: dict) -> Seq2SeqLayout:
        cross = d.get("cross", {})
        return cls(KVLayout.from_dict(d["self"]), **{k: cross[k] for k in ("cross_key", "cross_value") if k in cross})
