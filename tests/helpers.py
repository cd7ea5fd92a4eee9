"""Builders for tiny random models, a tokenizer and a synthetic task mix (no network)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

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
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    shutil.copy(Path(tokenizer_dir) / "tokenizer.json", out_dir / "tokenizer.json")
    return out_dir


def make_tiny_checkpoint(
    out_dir: Path, base_dir: Path, kind: str = "lora", init_std: float = 0.2, seed: int = 0,
    num_top_layers: int = 2, gate: str = "task", gate_std: float = 0.0,
) -> Path:
    """A checkpoint over a tiny base with *random* (non-zero) adapters and mixtures, so
    parity tests can fail. No training: fast. ``gate="token"``: its gate drawn with ``gate_std``."""
    import torch

    from alter_edge.base_model import load_base_model
    from alter_edge.config import MTAConfig, TrainConfig
    from alter_edge.inject import MTAModel
    from alter_edge.tasks import TaskRegistry
    from alter_edge.training.checkpoint import save_checkpoint

    tasks = TaskRegistry.infer(TINY_ROWS)
    base, _tok, info = load_base_model(str(base_dir))
    torch.manual_seed(seed)
    # "lora+attn": the lora kind on the attention projections too
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
    save_checkpoint(Path(out_dir), model, tasks, tc, info, {"complete": True, "stage": 2, "step": 0})
    return Path(out_dir)


def train_tiny_base(base_dir: Path, steps: int = 60, lr: float = 3e-3, seed: int = 0) -> Path:
    """Fit a tiny base on the synthetic rows (prompt + answer, teacher forcing) so its
    predictions are confident, as a trained model's are; saves it back in place. Seconds."""
    import torch
    from transformers import AutoModelForCausalLM

    from alter_edge.base_model import load_tokenizer
    from alter_edge.tasks import TaskRegistry

    base_dir = Path(base_dir)
    tok = load_tokenizer(base_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    tasks = TaskRegistry.infer(TINY_ROWS)
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    seqs = []
    for r in TINY_ROWS:
        spec = tasks.get(r["task"])
        text = spec.prompt_template.format(input=r["input"]) + " " + r["target"]
        seqs.append(tok.encode(text, add_special_tokens=False).ids + [eos])
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(base_dir)
    return base_dir
