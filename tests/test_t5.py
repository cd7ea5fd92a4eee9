"""T5 (the paper's backbone), training side: MTA in the FFNs of both stacks. Tiny random T5s (v1.0 ReLU, v1.1 gated-GELU) built
from ``T5Config`` in-process."""

from __future__ import annotations

import pytest
import torch

from alter_edge.config import MTAConfig
from alter_edge.testing import make_tiny_t5


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTER_EDGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module", params=["1.0", "1.1"])
def t5_dir(request, tmp_path_factory, tiny_tokenizer_dir):
    return make_tiny_t5(request.param, tmp_path_factory.mktemp(f"t5-{request.param}"), tiny_tokenizer_dir)


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
