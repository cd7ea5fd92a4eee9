"""The MTA module: base equivalence at init, mixed-task batches, trainable groups, the
frozen-prefix cache, and injection errors."""

from __future__ import annotations

import pytest
import torch

from alter_edge.base_model import load_base_model
from alter_edge.config import MTAConfig
from alter_edge.errors import ConfigError
from alter_edge.inject import MTAModel, count_parameters
from alter_edge.mta import prior_logits

KINDS = ["lora", "ffn", "bottleneck", "lora+attn"]


def _cfg(kind: str, **kw) -> MTAConfig:
    """'lora+attn' = the lora kind on the attention projections as well as the MLP's."""
    return MTAConfig(num_tasks=3, adapter_kind=kind.split("+")[0], lora_attention=kind.endswith("+attn"), **kw)


def _inputs(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding on row 0
    return ids, mask, torch.tensor([0, 1, 2])


def _randomize(model: MTAModel) -> None:
    with torch.no_grad():
        for b in model.blocks.values():
            b.mixture.logits.normal_()


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_adapters_reproduce_base(tiny_base_dir, kind):
    base, _, _ = load_base_model(str(tiny_base_dir))
    ids, mask, tids = _inputs(base.config.vocab_size)
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask).logits
    model = MTAModel(base, _cfg(kind, num_top_layers=2))
    _randomize(model)  # any mixture: zero-delta adapters (or equal experts) change nothing
    with torch.no_grad():
        out = model(ids, mask, tids).logits
    assert torch.allclose(out[mask.bool()], ref[mask.bool()], atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_batch_equals_each_task_alone(tiny_base_dir, kind):
    base, _, _ = load_base_model(str(tiny_base_dir))
    ids, mask, tids = _inputs(base.config.vocab_size, seed=1)
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask).logits
    model = MTAModel(base, _cfg(kind, num_top_layers=2, init_std=0.2))
    _randomize(model)
    with torch.no_grad():
        mixed = model(ids, mask, tids).logits
        alone = torch.cat([model(ids[i : i + 1], mask[i : i + 1], tids[i : i + 1]).logits for i in range(3)])
        other = model(ids, mask, torch.tensor([1, 2, 0])).logits
    m = mask.bool()
    assert torch.allclose(mixed[m], alone[m], atol=1e-5)
    # the adapters really act, and act per task: otherwise the check above proves nothing
    assert (mixed[m] - ref[m]).abs().max() > 1e-2
    assert (mixed[m] - other[m]).abs().max() > 1e-3


def test_attention_lora_is_on_by_default_for_the_lora_kind_only():
    assert MTAConfig(num_tasks=2).lora_attention is True
    assert MTAConfig(num_tasks=2, adapter_kind="ffn").lora_attention is False
    assert MTAConfig(num_tasks=2, adapter_kind="bottleneck").lora_attention is False
    assert MTAConfig(num_tasks=2, lora_attention=False).lora_attention is False
    assert MTAConfig.from_dict(MTAConfig(num_tasks=2).to_dict()) == MTAConfig(num_tasks=2)


def test_only_intended_parameters_train(tiny_base_dir):
    base, _, _ = load_base_model(str(tiny_base_dir))
    model = MTAModel(base, MTAConfig(num_tasks=3, adapter_kind="lora", num_top_layers=2, lora_attention=False))
    groups = model.parameter_groups()
    n_adapters = sum(p.numel() for p in groups["adapters"])
    n_mix = sum(p.numel() for p in groups["mixture"])
    for trains, expected in (["adapters"], n_adapters), (["mixture"], n_mix), (["adapters", "mixture"], n_adapters + n_mix):
        model.set_trainable(trains)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    counts = count_parameters(model)
    assert counts["mixture"] == 2 * 3 * model.cfg.num_adapters  # 2 blocks x (T, K)
    assert counts["base"] > counts["adapters"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_cached_prefix_equals_full_forward(tiny_base_dir, kind):
    base, _, _ = load_base_model(str(tiny_base_dir))
    model = MTAModel(base, _cfg(kind, num_top_layers=2, init_std=0.2))
    _randomize(model)
    model.set_trainable(["adapters", "mixture"])
    ids, _, tids = _inputs(base.config.vocab_size, seed=2)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding, as in training
    pos = (torch.tensor([0, 0, 1, 2]), torch.tensor([7, 8, 5, 8]))

    def run(prefix):
        model.zero_grad(set_to_none=True)
        logits = model.logits_at(ids, mask, tids, pos, prefix_hidden=prefix)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([3, 4, 5, 6]))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    loss_full, grads_full = run(None)
    loss_cached, grads_cached = run(model.prefix_hidden(ids, mask))
    assert torch.allclose(loss_full, loss_cached, atol=1e-6)
    assert len(grads_full) == len(grads_cached) > 0
    for a, b in zip(grads_full, grads_cached, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads_full)


def test_prior_prefers_own_and_shared_adapters():
    cfg = MTAConfig(num_tasks=4)  # K = 5: four own + one shared
    w = torch.softmax(prior_logits(cfg) / cfg.temperature, -1)
    assert w.shape == (4, 5)
    for t in range(4):
        assert w[t].argmax() == t
        assert w[t, 4] > w[t, (t + 1) % 4]  # the shared adapter beats a foreign one
    overlap = torch.softmax(prior_logits(MTAConfig(num_tasks=4, num_adapters=4, prior="overlap")) / 0.1, -1)
    assert overlap[0, 0] == overlap[0, 1] and overlap[1, 1] == overlap[1, 2] and overlap[0, 2] < overlap[0, 1]


def test_unsupported_architecture_and_bad_layers(tiny_llama_dir):
    base, _, _ = load_base_model(str(tiny_llama_dir))
    base.config.model_type = "t5-nonsense"
    with pytest.raises(ConfigError, match="supported: .*gpt2.*llama"):
        MTAModel(base, MTAConfig(num_tasks=2))
    base.config.model_type = "llama"
    with pytest.raises(ConfigError, match="out of range"):
        MTAModel(base, MTAConfig(num_tasks=2, layers=[7]))
    with pytest.raises(ConfigError, match="adapter_kind"):
        MTAConfig(num_tasks=2, adapter_kind="prefix")


def test_task_ids_must_be_int64_vector(tiny_llama_dir):
    base, _, _ = load_base_model(str(tiny_llama_dir))
    model = MTAModel(base, MTAConfig(num_tasks=2, num_top_layers=1))
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="int64"):
        model(ids, torch.ones_like(ids), torch.tensor([0], dtype=torch.int32))


def test_attention_lora_adds_adapters_to_attention(tiny_base_dir):
    base, _, _ = load_base_model(str(tiny_base_dir))
    plain = count_parameters(MTAModel(base, _cfg("lora", num_top_layers=2)))["adapters"]
    base, _, _ = load_base_model(str(tiny_base_dir))
    model = MTAModel(base, _cfg("lora+attn", num_top_layers=2))
    assert count_parameters(model)["adapters"] > plain
    assert all(len(b.lora_layers) > len(model.spec.lora_targets) for b in model.blocks.values())
    with pytest.raises(ConfigError, match="lora_attention"):
        MTAModel(load_base_model(str(tiny_base_dir))[0], _cfg("ffn+attn", num_top_layers=1))


def test_frozen_weights_in_bf16_nests_and_restores(tiny_llama_dir):
    """The frozen projections go to bf16 inside (adapters untouched), an inner context over
    the blocks below keeps the outer one's head copy, and every float32 original comes back
    (Llama: nn.Linear projections)."""
    base, _, _ = load_base_model(str(tiny_llama_dir))
    model = MTAModel(base, _cfg("lora", num_top_layers=2, init_std=0.2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapters = {id(p) for ps in model.parameter_groups().values() for p in ps}
    first = model.adapted_layers[0]
    with model.frozen_weights_in(torch.bfloat16):
        top = [m for i in model.adapted_layers for m in model._layers()[i].modules() if isinstance(m, torch.nn.Linear)]
        assert top and all(m.weight.dtype == torch.bfloat16 for m in top)
        assert all(p.dtype == torch.float32 for p in model.parameters() if id(p) in adapters)
        with model.frozen_weights_in(torch.bfloat16, layers=range(first)):
            low = [m for i in range(first) for m in model._layers()[i].modules() if isinstance(m, torch.nn.Linear)]
            assert low and all(m.weight.dtype == torch.bfloat16 for m in low)
        assert model._head_weight is not None and model._head_weight.dtype == torch.bfloat16
        assert all(m.weight.dtype == torch.float32 for m in low)
    assert model._head_weight is None
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
