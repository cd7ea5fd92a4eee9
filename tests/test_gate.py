"""The learned per-token gate (``MTAConfig.gate = "token"``): it starts equal to the task
mixture, mixes per position, keeps rows independent, works on the cached-prefix and KV-cache
paths, trains in stage 2 only, and exports as the multi-task graph only (its mixture does not
fold into per-task graphs), with its projections kept fp32 when quantized."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alter_edge.base_model import kv_cache_kwarg, kv_cache_out, load_base_model
from alter_edge.config import MTAConfig
from alter_edge.errors import CheckpointError, ConfigError
from alter_edge.inject import MTAModel

KINDS = ["lora", "ffn", "bottleneck", "lora+attn"]


def _model(base_dir, kind: str, gate: str, seed: int = 0) -> MTAModel:
    base, _, _ = load_base_model(str(base_dir))
    cfg = MTAConfig(num_tasks=3, adapter_kind=kind.split("+")[0], lora_attention=kind.endswith("+attn"),
                    num_top_layers=2, init_std=0.2, gate=gate)
    torch.manual_seed(seed)  # the same adapter values for both gates
    model = MTAModel(base, cfg)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for b in model.blocks.values():
            b.mixture.logits.copy_(torch.randn(b.mixture.logits.shape, generator=g))
    return model


def _set_gate(model: MTAModel, std: float = 3.0) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for b in model.blocks.values():
            b.gate_weight.copy_(torch.randn(b.gate_weight.shape, generator=g) * std)


def _inputs(vocab: int):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    return ids, mask, torch.tensor([0, 1, 2])


@pytest.mark.parametrize("kind", KINDS)
def test_zero_gate_equals_task_mixture_and_a_trained_one_does_not(tiny_base_dir, kind):
    task = _model(tiny_base_dir, kind, "task")
    token = _model(tiny_base_dir, kind, "token")
    ids, mask, tids = _inputs(task.base.config.vocab_size)
    m = mask.bool()
    with torch.no_grad():
        a = task(ids, mask, tids).logits
        b = token(ids, mask, tids).logits
        _set_gate(token)
        c = token(ids, mask, tids).logits
    assert torch.allclose(a[m], b[m], atol=1e-5)
    assert (a[m] - c[m]).abs().max() > 1e-3


def test_token_gate_weights_vary_by_position_and_sum_to_one(tiny_llama_dir):
    model = _model(tiny_llama_dir, "lora", "token")
    _set_gate(model)
    block = next(iter(model.blocks.values()))
    seen = []
    handle = block.register_forward_hook(lambda mod, args, out: seen.append(mod.weights()))
    ids, mask, tids = _inputs(model.base.config.vocab_size)
    with torch.no_grad():
        model(ids, mask, tids)
    handle.remove()
    w = seen[0]
    assert w.shape == (3, 9, model.cfg.num_adapters)
    assert torch.allclose(w.sum(-1), torch.ones(3, 9), atol=1e-5)
    assert (w[:, 1:] - w[:, :-1]).abs().max() > 1e-2  # not one mixture per row
    assert all(b.gate_input is None for b in model.blocks.values())  # released after the call


@pytest.mark.parametrize("kind", ["lora+attn", "ffn"])
def test_token_gate_rows_independent_and_cached_prefix_equal(tiny_base_dir, kind):
    model = _model(tiny_base_dir, kind, "token")
    _set_gate(model)
    ids, mask, tids = _inputs(model.base.config.vocab_size)
    m = mask.bool()
    with torch.no_grad():
        mixed = model(ids, mask, tids).logits
        alone = torch.cat([model(ids[i : i + 1], mask[i : i + 1], tids[i : i + 1]).logits for i in range(3)])
    assert torch.allclose(mixed[m], alone[m], atol=1e-5)

    model.set_trainable(["mixture"])
    full_mask = torch.ones_like(ids)
    pos = (torch.tensor([0, 1, 2]), torch.tensor([8, 5, 7]))

    def run(prefix):
        model.zero_grad(set_to_none=True)
        logits = model.logits_at(ids, full_mask, tids, pos, prefix_hidden=prefix)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([3, 4, 5]))
        loss.backward()
        return loss.detach(), [b.gate_weight.grad.clone() for b in model.blocks.values()]

    loss_full, grads_full = run(None)
    loss_cached, grads_cached = run(model.prefix_hidden(ids, full_mask))
    assert torch.allclose(loss_full, loss_cached, atol=1e-6)
    for a, b in zip(grads_full, grads_cached, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in grads_full)  # the gate gets a gradient


def test_token_gate_incremental_decoding_equals_full_forward(tiny_llama_dir):
    model = _model(tiny_llama_dir, "lora+attn", "token")
    _set_gate(model)
    ids, _, tids = _inputs(model.base.config.vocab_size)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        full = model(ids, mask, tids).logits[:, -1]
        first = model(ids[:, :-1], mask[:, :-1], tids, use_cache=True)
        past = {kv_cache_kwarg(model): kv_cache_out(first)}  # the keyword this transformers takes
        step = model(ids[:, -1:], mask, tids, use_cache=True, **past).logits[:, -1]
    assert torch.allclose(full, step, atol=1e-4)


def test_gate_is_a_mixture_parameter(tiny_llama_dir):
    model = _model(tiny_llama_dir, "lora", "token")
    groups = model.parameter_groups()
    gates = [b.gate_weight for b in model.blocks.values()]
    assert all(any(p is g for p in groups["mixture"]) for g in gates)
    assert not any(p is g for p in groups["adapters"] for g in gates)
    assert sum(k.endswith(".gate_weight") for k in model.mta_state_dict()) == len(model.blocks)
    with pytest.raises(ConfigError, match="gate 'per-row' is not one of task, token"):
        MTAConfig(num_tasks=2, gate="per-row")


def test_two_stage_training_trains_the_gate_in_stage_2_and_per_task_export_refuses_it(
        trainable_llama_dir, tiny_data, tmp_path, monkeypatch):
    from alter_edge.config import TrainConfig
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint
    from alter_edge.training.checkpoint import load_checkpoint
    from alter_edge.training.trainer import run_training

    monkeypatch.setenv("ALTER_EDGE_CACHE", str(tmp_path / "cache"))
    kw = dict(base_model=str(trainable_llama_dir), stage1_steps=12, batch_size=8, stage1_lr=5e-3,
              stage2_lr=5e-2, save_every=5, stage2_guard=0.0, eval_max_rows=6, eval_max_new_tokens=4,
              mta={"num_top_layers": 2, "adapter_kind": "lora", "gate": "token"})
    run_training(tiny_data, tmp_path / "s1", TrainConfig(stage2_steps=0, **kw), progress=False)
    run_training(tiny_data, tmp_path / "s2", TrainConfig(stage2_steps=6, **kw), progress=False)
    after1, after2 = load_checkpoint(tmp_path / "s1").model, load_checkpoint(tmp_path / "s2").model
    for b1, b2 in zip(after1.blocks.values(), after2.blocks.values(), strict=True):
        assert torch.count_nonzero(b1.gate_weight) == 0  # stage 1 leaves the gate at zero
        assert torch.count_nonzero(b2.gate_weight) > 0  # stage 2 trains it
    for a, b in zip(after1.parameter_groups()["adapters"], after2.parameter_groups()["adapters"], strict=True):
        assert torch.equal(a, b)

    with pytest.raises(CheckpointError, match="gate 'token'.*per-task graphs.*multi-task graph only"):
        export_checkpoint(tmp_path / "s2", tmp_path / "bundle", ExportOptions(progress=False))
    assert not (tmp_path / "bundle").exists()


def test_gated_checkpoint_exports_the_multitask_graph_with_the_gate_in_it(tiny_llama_dir, tmp_path):
    """``--task none``: the graph equals the gated PyTorch model (the pipeline's own check) and
    not the same model with its gate zeroed, so the gate is in the graph; int8 and int4 keep
    exactly the gate's projections (one per adapted block) in fp32; the runtime serves it."""
    import json

    from alter_edge.export.pipeline import ExportOptions, export_checkpoint
    from alter_edge.export.validate import forced_logits
    from alter_edge.runtime import EdgeModel
    from alter_edge.testing import make_tiny_checkpoint
    from alter_edge.training.checkpoint import load_checkpoint

    ck_dir = make_tiny_checkpoint(tmp_path / "ck", tiny_llama_dir, kind="lora+attn", gate="token", gate_std=0.5)
    lifted = dict(int8_budget=100.0, int4_budget=100.0, min_top1_int8=0.0, min_top1_int4=0.0)  # random model
    manifest = export_checkpoint(ck_dir, tmp_path / "bundle", ExportOptions(tasks=None, fp32=True, int8=True,
                                                                              int4=True, progress=False, **lifted))
    bundle = tmp_path / "bundle"
    assert sorted(g["precision"] for g in manifest["graphs"]) == ["fp32", "int4", "int8"]
    assert all(g["task"] is None for g in manifest["graphs"])
    v = json.loads((bundle / "validation.json").read_text())
    parity = [c for c in v["checks"] if c["check"] == "fp32_vs_torch"]
    assert parity and all(c["passed"] and c["tokens_equal"] for c in parity)

    ck = load_checkpoint(ck_dir)
    model = ck.model
    prompts, tids = [[5, 6, 7, 8, 9], [10, 11, 12]], [0, 1]
    runner = EdgeModel.load(bundle, precision="fp32").runner_for(["echo", "colour"])
    forced = [[13, 14, 15], [16, 17, 18]]
    got = forced_logits(runner, prompts, tids, ck.pad_id, forced)
    with torch.no_grad():
        def run():
            return [model(torch.tensor([p + f[:-1]]), torch.ones(1, len(p) + len(f) - 1, dtype=torch.long),
                          torch.tensor([t])).logits[0, len(p) - 1:].numpy()
                    for p, f, t in zip(prompts, forced, tids, strict=True)]
        gated = run()
        for b in model.blocks.values():
            b.gate_weight.zero_()
        ungated = run()
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, gated, strict=True)) < 3e-4
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, ungated, strict=True)) > 1e-2
    # the gate (its RMSNorm and projection) is made once per adapted block and stays fp32 (MatMul,
    # not MatMulNBits) in the quantized graphs
    for rel in ("model.int8.onnx", "model.int4.onnx"):
        ops = v["build"][rel]["operators"]
        assert ops["SimplifiedLayerNormalization"] == 1 + len(model.blocks)
        assert ops["Softmax"] == len(model.blocks) and ops["MatMul"] >= len(model.blocks)
    for precision in ("fp32", "int8", "int4"):
        rt = EdgeModel.load(bundle, precision=precision)
        assert len(rt.generate("hello there", task="echo", max_new_tokens=3).token_ids) <= 3
        assert rt.classify("hello there", task="colour").label in ("no", "yes")
