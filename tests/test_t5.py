"""T5 (the paper's backbone), training side: MTA in the FFNs of both stacks, task ids into both,
the loss on the decoder's target, two-stage training, checkpoints, evaluation (the export:
tests/test_t5_export.py). Tiny random T5s (v1.0 ReLU, v1.1 gated-GELU) built
from ``T5Config`` in-process."""

from __future__ import annotations

import pytest
import torch

from alter_edge.config import MTAConfig, TrainConfig
from alter_edge.errors import ConfigError
from alter_edge.training.batching import Encoded, batch_loss
from alter_edge.training.checkpoint import load_checkpoint
from alter_edge.training.evaluate import greedy_generate, label_scores
from alter_edge.training.trainer import evaluate_checkpoint, run_training


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTER_EDGE_CACHE", str(tmp_path / "cache"))


def _model(path, **mta):
    from alter_edge.base_model import load_base_model
    from alter_edge.inject import MTAModel

    base, _tok, _info = load_base_model(str(path))
    return MTAModel(base, MTAConfig(**{"num_tasks": 3, "num_top_layers": 2, "init_std": 0.3, **mta}))


def _randomize_mixture(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in model.blocks.values():
            b.mixture.logits.copy_(torch.randn(b.mixture.logits.shape, generator=g))


@pytest.mark.parametrize("kind", ["ffn", "lora", "bottleneck", "hydra"])
def test_mta_in_both_stacks(t5_dir, kind):
    m = _model(t5_dir, adapter_kind=kind, lora_attention=kind in ("lora", "hydra"))
    assert m.seq2seq and m.adapted_by_stack == {"encoder": [1, 2], "decoder": [1, 2]}
    assert sorted(m.blocks) == ["decoder_1", "decoder_2", "encoder_1", "encoder_2"]
    gated = m.base.config.is_gated_act
    for stack, at in (("encoder", 1), ("decoder", 2)):
        for i in (1, 2):
            ffn = m.base.get_submodule(f"{stack}.block.{i}.layer.{at}.DenseReluDense")
            assert ffn is m.blocks[f"{stack}_{i}"]
        assert not isinstance(m.base.get_submodule(f"{stack}.block.0.layer.{at}.DenseReluDense"), type(ffn))
    if kind in ("lora", "hydra"):  # the FFN's own projections (v1.0 wi/wo, v1.1 wi_0/wi_1/wo) and attention
        names = {n.rsplit(".", 2)[-2] for n, _ in m.named_parameters() if n.endswith("lora_A")}
        assert names >= ({"wi_0", "wi_1", "wo"} if gated else {"wi", "wo"}) | {"q", "k", "v", "o"}
        cross = [n for n, _ in m.named_parameters() if "EncDecAttention" in n and n.endswith("lora_A")]
        assert cross  # the decoder's cross attention too
    assert all(p.requires_grad is False for p in m.base_parameters())


def test_reference_preset_is_the_middle_block_of_each_stack(t5_dir):
    from alter_edge.presets import PRESETS

    m = _model(t5_dir, **{k: v for k, v in PRESETS["reference"].mta.items()}, init_std=0.0)
    assert m.adapted_by_stack == {"encoder": [1], "decoder": [1]}


@pytest.mark.parametrize("kind", ["ffn", "lora"])
def test_mixed_task_batch_equals_rows_alone_and_task_ids_reach_both_stacks(t5_dir, kind):
    torch.manual_seed(0)
    m = _model(t5_dir, adapter_kind=kind)
    _randomize_mixture(m)
    rows = [Encoded(0, [5, 6, 7, 8, 9], [10, 11, 1]), Encoded(1, [12, 13], [14, 15, 16, 1]),
            Encoded(2, [7, 7, 7], [9, 1])]
    with torch.no_grad():
        together = [float(batch_loss(m, rows, [0, 1, 2], 0, None))]
        alone = [float(batch_loss(m, rows, [i], 0, None)) for i in range(3)]
        assert together[0] == pytest.approx(sum(alone) / 3, abs=1e-5)
        # each stack's adapters matter: with one stack's mixture changed, the loss moves
        for stack in ("encoder", "decoder"):
            saved = {k: b.mixture.logits.clone() for k, b in m.blocks.items()}
            for k, b in m.blocks.items():
                if k.startswith(stack):
                    b.mixture.logits.add_(torch.randn_like(b.mixture.logits))
            assert float(batch_loss(m, rows, [0], 0, None)) != pytest.approx(alone[0], abs=1e-6)
            for k, b in m.blocks.items():
                b.mixture.logits.copy_(saved[k])
        # greedy: a mixed batch gives each row what it gives alone
        prompts, tids = [r.prompt for r in rows], [r.task_id for r in rows]
        batch = greedy_generate(m, prompts, tids, 1, 0, 6)
        assert batch == [greedy_generate(m, [p], [t], 1, 0, 6)[0] for p, t in zip(prompts, tids, strict=True)]


def test_loss_equals_transformers_own(t5_dir):
    """With the adapters at the base (init_std 0: equal copies), the loss is T5's own loss on the labels."""
    m = _model(t5_dir, adapter_kind="ffn", init_std=0.0)
    row = Encoded(0, [5, 6, 7, 8], [10, 11, 12, 1])
    with torch.no_grad():
        ours = float(batch_loss(m, [row], [0], 0, None))
        with m.tasks(torch.tensor([0])):
            ref = float(m.base(input_ids=torch.tensor([row.prompt]), labels=torch.tensor([row.target])).loss)
    assert ours == pytest.approx(ref, rel=1e-5)


def test_label_scores_match_the_teacher_forced_loss(t5_dir):
    m = _model(t5_dir, adapter_kind="lora")
    _randomize_mixture(m)
    prompt, labels = [5, 6, 7], [[10, 1], [11, 12, 1]]
    scores = label_scores(m, prompt, 1, labels, 0)
    with torch.no_grad():
        for s, lab in zip(scores, labels, strict=True):
            loss = float(batch_loss(m, [Encoded(1, prompt, lab)], [0], 0, None))
            assert -s / len(lab) == pytest.approx(loss, rel=1e-4)


def _cfg(base, **kw):
    d = dict(base_model=str(base), stage1_steps=30, stage2_steps=10, batch_size=8, stage1_lr=1e-2,
             stage2_lr=5e-2, save_every=50, eval_max_rows=6, eval_max_new_tokens=4, stage2_guard=0.0,
             mta={"num_top_layers": 2, "adapter_kind": "lora"})
    d.update(kw)
    return TrainConfig(**d)


def test_two_stage_training_checkpoint_and_eval(t5_dir, tiny_data, tmp_path):
    out = tmp_path / "run"
    state = run_training(tiny_data, out, _cfg(t5_dir), progress=False)
    losses = [h["loss"] for h in state["history"] if h["stage"] == "stage1"]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert state["complete"] and set(state["evals"]) == {"stage1", "stage2"}
    assert state["cache"] == {"off": "encoder-decoder: no frozen-prefix cache yet"}
    ck = load_checkpoint(out)
    assert ck.model.seq2seq and ck.base_info.model_type == "t5"
    # the round trip: the adapters and mixtures saved are those loaded, and they are trained ones
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapters.safetensors"))
    own = ck.model.mta_state_dict()
    assert saved.keys() == own.keys() and any(k.startswith("base.encoder.") for k in own) and any(k.startswith("base.decoder.") for k in own)
    assert all(torch.equal(saved[k], own[k]) for k in saved)
    assert any(b.mixture.logits.abs().sum() > 0 for b in ck.model.blocks.values())
    ev = evaluate_checkpoint(out, progress=False, label_scoring=True)
    assert set(ev["per_task"]) == {"colour", "echo", "parity"} and 0.0 <= ev["overall"] <= 1.0
    assert set(ev["label_scoring"]) == {"colour", "parity"}


def test_train_base_saves_and_loads_the_whole_t5(t5_dir, tiny_data, tmp_path):
    out = tmp_path / "full"
    run_training(tiny_data, out, _cfg(t5_dir, stages=1, stage1_steps=3, stage2_steps=0, train_base=True,
                                      eval_max_rows=2), progress=False)
    ck = load_checkpoint(out)
    from alter_edge.base_model import load_base_model

    fresh, _, _ = load_base_model(str(t5_dir))
    for name in ("shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight",
                 "decoder.block.0.layer.1.EncDecAttention.o.weight"):  # the trained base came back
        assert not torch.equal(fresh.get_parameter(name), ck.model.base.get_parameter(name)), name


def test_unsupported_families_name_t5_beside_the_decoders():
    from alter_edge.inject import arch_spec

    with pytest.raises(ConfigError, match=r"llama.*\(decoder LMs\), and t5 \(encoder-decoders\)"):
        arch_spec("bart")


def test_resume_equals_an_uninterrupted_run(t5_dir, tiny_data, tmp_path):
    cfg = _cfg(t5_dir, stages=1, stage1_steps=4, stage2_steps=0, eval_max_rows=2)
    run_training(tiny_data, tmp_path / "whole", cfg, progress=False)
    part = run_training(tiny_data, tmp_path / "parts", cfg, progress=False, stop_after=2)
    assert not part["complete"]
    run_training(tiny_data, tmp_path / "parts", cfg, resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path / d).model.mta_state_dict() for d in ("whole", "parts"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_micro_batches_accumulate_the_whole_batch(t5_dir):
    """Parts of a batch (``micro_batch_tokens``) add up to its loss and gradients; ``packed``
    trains a T5 padded, with the same result."""
    from alter_edge.training.batching import accumulate_batch

    m = _model(t5_dir, adapter_kind="lora")
    _randomize_mixture(m)
    params = m.set_trainable(["adapters", "mixture"])
    rows = [Encoded(i % 3, [5 + i] * (2 + i), [10 + i, 1]) for i in range(6)]
    got = []
    for budget, layout in ((0, "padded"), (32, "padded"), (32, "packed")):
        for p in params:
            p.grad = None
        loss = accumulate_batch(m, rows, list(range(6)), 0, None, "float32", budget, layout=layout)
        got.append((loss, [p.grad.clone() for p in params]))
    for loss, grads in got[1:]:
        assert loss == pytest.approx(got[0][0], rel=1e-5)
        assert all(torch.allclose(g, h, atol=1e-6) for g, h in zip(grads, got[0][1], strict=True))
