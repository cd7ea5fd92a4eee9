"""The bundle as an onnxruntime-genai model folder: ``genai_config.json`` and ``tokenizer_config.json``.

``onnxruntime_genai.Model(bundle_dir)`` reads ``genai_config.json`` beside the graph; its
tokenizer (onnxruntime-extensions) reads the bundle's ``tokenizer.json`` with a
``tokenizer_config.json``. Every number is the manifest's (``kv_cache``, eos/pad, ``generation``)
or the model's (vocabulary, hidden size, attention heads). onnxruntime-genai refuses a field it
does not know, so only fields of its schema are written. docs/bundle-format.md, "Loading a bundle
with onnxruntime-genai".
"""

from __future__ import annotations

import json
from pathlib import Path

from alter_edge.errors import BundleError
from alter_edge.io import atomic_write_text
from alter_edge.runtime.bundle import PRECISION_PREFERENCE
from alter_edge.runtime.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, KVLayout

GENAI_CONFIG = "genai_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def genai_graph(graphs: list[dict]) -> dict:
    """The graph ``genai_config.json`` names: the multi-task graph at the precision the runtime
    serves by default (int8, else int4, else fp32); in a bundle without one, a per-task graph
    by the same rule (it takes no ``task_ids``)."""
    multitask = [g for g in graphs if g.get("task") is None]
    for pool in (multitask, graphs):
        for precision in PRECISION_PREFERENCE:
            for g in pool:
                if g["precision"] == precision:
                    return g
    raise BundleError("the bundle has no graph to name in genai_config.json")


def genai_config(meta: dict, graph: str, vocab_size: int, hidden_size: int, num_attention_heads: int) -> dict:
    """``genai_config.json`` for ``graph`` (a path in the bundle); ``meta``: the manifest's fields."""
    kv = KVLayout.from_dict(meta["kv_cache"])
    gen = meta.get("generation", {})
    context = kv.max_sequence_length  # positions the graph's rotary cache covers (0: not recorded)
    budget = gen.get("max_prompt_tokens", 0) + gen.get("max_new_tokens", 0)  # one request's default
    max_length = min(n for n in (budget, context) if n)  # never past the rotary cache

    def pattern(name: str) -> str:  # "past_key_values.{i}.key" -> "past_key_values.%d.key"
        return name.format(i="%d")

    return {
        "model": {
            "type": "decoder",  # onnxruntime-genai's generic decoder-only model: I/O named below
            "vocab_size": int(vocab_size),
            **({"context_length": context} if context else {}),
            "eos_token_id": int(meta["eos_token_id"]),
            "pad_token_id": int(meta["pad_token_id"]),
            "decoder": {
                "filename": graph,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": kv.head_dim,
                "hidden_size": int(hidden_size),
                "num_attention_heads": int(num_attention_heads),
                "num_key_value_heads": kv.num_kv_heads,
                "num_hidden_layers": kv.num_layers,
                "inputs": {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK,
                           "past_key_names": pattern(kv.past_key), "past_value_names": pattern(kv.past_value)},
                "outputs": {"logits": LOGITS, "present_key_names": pattern(kv.present_key),
                            "present_value_names": pattern(kv.present_value)},
            },
        },
        "search": {"max_length": max_length, "past_present_share_buffer": True, "do_sample": False,
                   "num_beams": 1},
    }


def tokenizer_config() -> dict:
    """What onnxruntime-extensions needs beside ``tokenizer.json``: a tokenizer class (it then
    reads the BPE model of ``tokenizer.json``) and no bos/eos added to a prompt, as in training."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
            "clean_up_tokenization_spaces": False}


def write_genai_files(bundle: Path, meta: dict, graphs: list[dict], vocab_size: int, hidden_size: int,
                      num_attention_heads: int) -> list[str]:
    """Write both files into ``bundle`` (before its manifest, which then lists them); returns
    their names."""
    graph = genai_graph(graphs)["path"]
    config = genai_config(meta, graph, vocab_size, hidden_size, num_attention_heads)
    atomic_write_text(Path(bundle) / GENAI_CONFIG, json.dumps(config, indent=2) + "\n")
    atomic_write_text(Path(bundle) / TOKENIZER_CONFIG, json.dumps(tokenizer_config(), indent=2) + "\n")
    return [GENAI_CONFIG, TOKENIZER_CONFIG]
