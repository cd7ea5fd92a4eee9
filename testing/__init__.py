"""Fixtures shared by the tests and the benchmarks: tiny random models, a word-level tokenizer,
a synthetic task mix, random-adapter checkpoints and the bundles the real exporter makes of them.

Torch-free to import (the torch-free runtime test imports it): torch, transformers and the
exporter are imported inside the functions that need them. Nothing here touches the network,
except a checkpoint over the built-in model, which reads its cached files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

SPECIAL = ["<pad>", "<eos>", "<unk>"]


def _synthetic_rows(n_per_task: int = 24, seed: int = 0) -> list[dict]:
    """A 3-task mix a tiny model can learn: 'parity' (classify), 'colour' (classify),
    'echo' (generate: repeat the last word)."""
    rng = random.Random(seed)
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird"]
    colours = {"red", "blue", "green"}
    rows = []
    for _ in range(n_per_task):
        k = rng.randint(1, 6)
        rows.append({"task": "parity", "input": "count " + " ".join(["x"] * k),
                     "target": "even" if k % 2 == 0 else "odd"})
        w = rng.choice(words)
        rows.append({"task": "colour", "input": f"is {w} a colour",
                     "target": "yes" if w in colours else "no"})
        a, b = rng.choice(words), rng.choice(words)
        rows.append({"task": "echo", "input": f"swap {a} {b}", "target": f"{b} {a}"})
    return rows


TINY_ROWS = _synthetic_rows()


def make_tokenizer(out_dir: Path) -> Path:
    """A word-level tokenizer over the synthetic vocabulary (plus a byte-ish fallback)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL)
    corpus = [f"{r['input']}\nAnswer: {r['target']}" for r in TINY_ROWS]
    corpus += ["hello world what is the answer . , ? ! Answer :"]
    tok.train_from_iterator(corpus, trainer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    return out_dir / "tokenizer.json"


def _save_base(model, out_dir: Path, tokenizer_dir: Path) -> Path:
    """Save a tiny base model and the tokenizer beside it, as a model folder."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    shutil.copy(Path(tokenizer_dir) / "tokenizer.json", out_dir / "tokenizer.json")
    return out_dir


def make_tiny_base(arch: str, out_dir: Path, tokenizer_dir: Path, seed: int = 0, num_layers: int = 4,
                   init_range: float = 0.02) -> Path:
    """Save a ``num_layers``-layer (default 4) random ``arch`` ('llama' or 'gpt2') model with the tiny tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    vocab = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())["model"]["vocab"]
    V = max(vocab.values()) + 1
    eos, pad = vocab["<eos>"], vocab["<pad>"]
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                          eos_token_id=eos, pad_token_id=pad, bos_token_id=None, tie_word_embeddings=True,
                          initializer_range=init_range)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=num_layers, n_head=4, n_positions=256,
                         eos_token_id=eos, pad_token_id=pad, bos_token_id=eos,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=init_range)
    else:
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(cfg)
    return _save_base(model, out_dir, tokenizer_dir)


def make_tiny_t5(version: str, out_dir: Path, tokenizer_dir: Path, seed: int = 0, num_layers: int = 3,
                 init_factor: float = 1.0) -> Path:
    """Save a random T5 (``version`` "1.0": ReLU FFN, tied head; "1.1": gated-GELU FFN, untied
    head, as flan-T5) with the tiny tokenizer, its ``T5Config`` built in-process (no network).
    ``num_layers`` blocks in each stack."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    if version not in ("1.0", "1.1"):
        raise ValueError(version)
    vocab = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())["model"]["vocab"]
    V = max(vocab.values()) + 1
    eos, pad = vocab["<eos>"], vocab["<pad>"]
    cfg = T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=num_layers, num_decoder_layers=num_layers,
                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                   dropout_rate=0.0, feed_forward_proj="relu" if version == "1.0" else "gated-gelu",
                   tie_word_embeddings=version == "1.0", eos_token_id=eos, pad_token_id=pad,
                   decoder_start_token_id=pad, initializer_factor=init_factor)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg)
    return _save_base(model, out_dir, tokenizer_dir)


# a tiny config of each decoder family the builder writes (2 layers, hidden 64), with each
# family's peculiarities switched on: sliding windows shorter than the test prompts, partial
# rotary, multipliers and softcaps away from 1
FAMILY_CONFIGS = {
    "llama": ("LlamaConfig", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 64}}),  # Llama 3.x
    "mistral": ("MistralConfig", {"sliding_window": 5}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {}),
    "gemma3_text": ("Gemma3TextConfig", {"sliding_window": 5, "query_pre_attn_scalar": 24, "attn_logit_softcapping": 5.0,
                                         "final_logit_softcapping": 3.0,
                                         "layer_types": ["sliding_attention", "full_attention"],
                                         "rope_parameters": {
                                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                             "full_attention": {"rope_type": "default", "rope_theta": 1e6}}}),
    "phi3": ("Phi3Config", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                "partial_rotary_factor": 0.5}}),
    "gpt2": ("GPT2Config", {}),
    "granite": ("GraniteConfig", {"embedding_multiplier": 6.0, "attention_multiplier": 0.15,
                                  "residual_multiplier": 0.5, "logits_scaling": 2.0}),
    "olmo2": ("Olmo2Config", {}),
}


def make_tiny_family(family: str, out_dir: Path, tokenizer_dir: Path, seed: int = 0, init_range: float = 0.1) -> Path:
    """Save a 2-layer random model of ``family`` (a ``FAMILY_CONFIGS`` key) with the tiny
    tokenizer, its config built in-process (no network)."""
    import torch
    import transformers

    vocab = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())["model"]["vocab"]
    V = max(vocab.values()) + 1
    eos, pad = vocab["<eos>"], vocab["<pad>"]
    cls, extra = FAMILY_CONFIGS[family]
    if family == "gpt2":
        common = dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=1024, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0)
    else:
        common = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=True)
        if family == "phi3":
            # head_dim 32: GroupQueryAttention's partial rotary takes multiples of 16 rotated dims
            common.update(original_max_position_embeddings=256, resid_pdrop=0.0, embd_pdrop=0.0,
                          num_attention_heads=2, num_key_value_heads=1)
            del common["head_dim"]
    cfg = getattr(transformers, cls)(**common, **extra, eos_token_id=eos, pad_token_id=pad, bos_token_id=eos,
                                     initializer_range=init_range)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # norms away from their init (ones, or Gemma's zeros), so a wrong norm shows
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return _save_base(model, out_dir, tokenizer_dir)


def make_tiny_checkpoint(
    out_dir: Path, base_dir: Path | str, kind: str = "lora", init_std: float = 0.2, seed: int = 0,
    num_top_layers: int = 2, gate: str = "task", gate_std: float = 0.0, data: Path | None = None,
) -> Path:
    """A checkpoint over a base (a folder, or a built-in name such as "smollm2-135m") with
    *random* (non-zero) adapters and mixtures, so parity tests can fail. No training: fast.
    ``kind`` "lora+attn": LoRA on the attention projections too. ``gate="token"``: its gate
    drawn with ``gate_std``. ``data``: a JSONL file whose tasks the checkpoint gets (recorded in
    its state, as training records it); default the synthetic mix (TINY_ROWS)."""
    import torch

    from alter_edge.base_model import load_base_model
    from alter_edge.config import MTAConfig, TrainConfig
    from alter_edge.inject import MTAModel
    from alter_edge.tasks import TaskRegistry
    from alter_edge.training.checkpoint import save_checkpoint

    rows = TINY_ROWS if data is None else [json.loads(x) for x in Path(data).read_text().splitlines() if x.strip()]
    tasks = TaskRegistry.infer(rows)
    base, _tok, info = load_base_model(str(base_dir))
    torch.manual_seed(seed)
    adapter_kind, attn = kind.split("+")[0], kind.endswith("+attn")
    cfg = MTAConfig(num_tasks=len(tasks), adapter_kind=adapter_kind, num_top_layers=num_top_layers,
                    init_std=init_std, lora_attention=attn, gate=gate)
    model = MTAModel(base, cfg)
    with torch.no_grad():
        for b in model.blocks.values():
            b.mixture.logits.add_(torch.randn_like(b.mixture.logits) * 0.2)
            if b.gate_weight is not None:
                b.gate_weight.normal_(std=gate_std)
    tc = TrainConfig(base_model=str(base_dir), stage1_steps=0, stage2_steps=0,
                     mta={"adapter_kind": adapter_kind, "num_top_layers": num_top_layers,
                          "lora_attention": attn, "gate": gate})
    state = {"complete": True, "stage": 2, "step": 0, **({"data": str(data)} if data is not None else {})}
    save_checkpoint(Path(out_dir), model, tasks, tc, info, state)
    return Path(out_dir)


def build_bundle(checkpoint_dir: Path, out_dir: Path, task_graphs: tuple[str, ...] = (), **options) -> Path:
    """The real exporter: validated fp32 graphs (the multi-task graph plus a per-task graph for
    each name in ``task_graphs``), generation defaults from the checkpoint."""
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    export_checkpoint(Path(checkpoint_dir), Path(out_dir),
                      ExportOptions(tasks=",".join(task_graphs) or None, progress=False, **options))
    return Path(out_dir)


def tiny_bundle(work: Path, init_range: float = 0.02) -> tuple[Path, Path, Path]:
    """(base, checkpoint, bundle) under ``work``, each made once: a 4-layer random Llama with the
    tiny tokenizer, a random-adapter LoRA checkpoint, and its bundle with a graph for 'echo'."""
    work = Path(work)
    tok, base, ckpt, bundle = work / "tok", work / "base", work / "ckpt", work / "bundle"
    if not (base / "config.json").is_file():
        make_tokenizer(tok)
        make_tiny_base("llama", base, tok, init_range=init_range)
    if not ckpt.is_dir():
        make_tiny_checkpoint(ckpt, base, kind="lora")
    if not (bundle / "manifest.json").is_file():
        build_bundle(ckpt, bundle, task_graphs=("echo",))
    return base, ckpt, bundle


def random_adapter_bundle(work: Path, base: str, int8: bool) -> tuple[Path, Path]:
    """(checkpoint, bundle) under ``work``, each made once: a random-adapter LoRA checkpoint on
    ``base`` (e.g. "smollm2-135m") and its bundle (multi-task graph + 'echo', fp32, int8 too
    with ``int8``). For speed benchmarks only: the export's accuracy gates are loosened."""
    from alter_edge.base_model import resolve_base_model
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    ckpt, bundle = work / "ckpt", work / ("bundle-int8" if int8 else "bundle-fp32")
    if not ckpt.is_dir():
        make_tiny_checkpoint(ckpt, resolve_base_model(base), kind="lora", init_std=0.02)
    if not (bundle / "manifest.json").is_file():
        # fp32 parity at the default atol 1e-4 failed at 1.01e-4 on SmolLM2-135M's 30 layers, and
        # int8 top-1 agreement / task metrics on near-uniform random-adapter outputs mean nothing.
        export_checkpoint(ckpt, bundle, ExportOptions(tasks="echo", fp32=True, int8=int8, overwrite=True,
                                                      atol=1e-3, int8_budget=100.0, min_top1_int8=0.0))
    return ckpt, bundle


def cpu_flags() -> str:
    """The CPU's model name, the SIMD flags that matter for onnxruntime and PyTorch, and the
    number of cpus: the line every benchmark figure is stated with."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(text.split("flags")[1].split("\n")[0].split())
        model = text.split("model name")[1].split("\n")[0].strip(" :\t")
    except (OSError, IndexError):
        return "unknown"
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{model}; {', '.join(have) or 'no AVX2'}; {os.cpu_count()} cpus"


def load_script(path: Path, name: str) -> ModuleType:
    """The script at ``path`` (a benchmark) as the module ``name``, loaded once by its path:
    no directory goes on ``sys.path``, so its neighbours stay unimportable."""
    import importlib.util

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # before it runs: dataclasses look their module up there
        spec.loader.exec_module(mod)
    return sys.modules[name]


def time_torch_greedy(model, prompt: list[int], task_id: int, batch: int, new_tokens: int, pad_id: int
                      ) -> tuple[float, float]:
    """PyTorch eager greedy decoding of ``batch`` copies of ``prompt`` through training's own loop
    (``alter_edge.training.evaluate.greedy_generate``, KV cache; eos ignored: id -1 never comes):
    (seconds to the first token, decode tokens/s after it). The first token is timed by a
    one-token run, the rest by a ``new_tokens`` run less that."""
    from alter_edge.training.evaluate import greedy_generate

    args = (model, [prompt] * batch, [task_id] * batch, -1, pad_id)
    t0 = time.perf_counter()
    greedy_generate(*args, max_new_tokens=1)
    t1 = time.perf_counter()
    greedy_generate(*args, max_new_tokens=new_tokens)
    first, total = t1 - t0, time.perf_counter() - t1
    return first, batch * (new_tokens - 1) / max(total - first, 1e-9)


def genai_greedy(model, prompts, task_ids, pad: int, eos: int, n: int) -> list[list[int]]:
    """onnxruntime-genai's greedy tokens (``model``: an ``onnxruntime_genai.Model`` of a bundle)
    on right-padded ``prompts``, ``task_ids`` fed per row; each row cut before its eos
    (alter-edge yields none)."""
    import numpy as np
    import onnxruntime_genai as og

    from alter_edge.padding import pad_rows
    from alter_edge.runtime.contract import TASK_IDS

    ids, _ = pad_rows(prompts, pad)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ids.shape[1] + n, do_sample=False, batch_size=len(prompts))
    gen = og.Generator(model, params)
    # onnxruntime-genai reads this array's memory at each step without holding a reference:
    # it must stay alive as long as the generator
    tids = np.asarray(task_ids, dtype=np.int64)
    gen.set_model_input(TASK_IDS, tids)
    gen.append_tokens(ids.astype(np.int32))
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    while not gen.is_done():
        gen.generate_next_token()
        for row, token in enumerate(gen.get_next_tokens()):
            done[row] = done[row] or int(token) == eos
            if not done[row]:
                out[row].append(int(token))
    return out
