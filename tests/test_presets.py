"""Presets (alter_edge/presets.py) and the mixture options they use, on tiny random models in
process: the authors' reference configuration (ffn experts in one middle block, a mixture per
task group, full fine-tuning) trains, saves its fine-tuned base, and exports int8 within the
default gates; the Poly-style and hydra presets train and export multi-task and per-task
graphs; the mixture trains at its own learning rate."""

from __future__ import annotations

import json

import pytest
import torch

from alter_edge.config import MTAConfig, TrainConfig
from alter_edge.errors import ConfigError
from alter_edge.presets import PRESETS, train_kwargs
from alter_edge.training.checkpoint import BASE_FILE, load_checkpoint
from alter_edge.training.trainer import run_training


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTER_EDGE_CACHE", str(tmp_path / "cache"))


def _preset_cfg(name: str, base, **train) -> TrainConfig:
    small = dict(base_model=str(base), save_every=1000, eval_max_rows=6, eval_max_new_tokens=4, batch_size=8)
    return TrainConfig(**train_kwargs(name, {**small, **train}, {}))


def _export(ck, out, **kw) -> dict:
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    manifest = export_checkpoint(ck, out, ExportOptions(progress=False, **kw))
    v = json.loads((out / "validation.json").read_text())
    assert v["checks"] and all(c["passed"] for c in v["checks"]), [c for c in v["checks"] if not c["passed"]]
    return manifest


def test_reference_preset_is_the_authors_configuration():
    cfg = TrainConfig(**train_kwargs("reference", {}, {}))
    m = MTAConfig(num_tasks=4, task_groups=[0, 1, 1, 2], **cfg.mta)
    assert (m.adapter_kind, m.num_adapters, m.num_shared, m.temperature) == ("ffn", 5, 0, 0.1)
    assert m.resolve_layers(30) == [15] and m.num_routes == 3
    assert cfg.train_base and cfg.stages == 1 and cfg.route == "group"
    assert cfg.stage1_lr == pytest.approx(1.2e-4)
    plan = cfg.stage_plan(train_rows=160)
    assert len(plan) == 1 and plan[0].steps == 100 and "base" in plan[0].trains  # 10 epochs of 160 rows at 16
    from alter_edge.mta import prior_logits

    p = torch.softmax(prior_logits(m) / m.temperature, -1)
    code = torch.softmax(torch.tensor([.22, .22, .2, .2, .2]) / 0.1, -1)
    assert torch.allclose(p[0], code) and torch.allclose(p[1], code.roll(1))
    assert TrainConfig(**train_kwargs("reference", {"stage1_lr": 1e-3}, {"layers": [2]})).stage1_lr == 1e-3
    with pytest.raises(ConfigError):
        train_kwargs("nope", {}, {})


def test_reference_preset_trains_the_base_and_exports_it(trainable_llama_dir, tiny_data, tmp_path, caplog):
    from alter_edge.base_model import load_base_model

    out = tmp_path / "ref"
    with caplog.at_level("WARNING"):
        state = run_training(tiny_data, out, _preset_cfg("reference", trainable_llama_dir, epochs=4.0,
                                                         stage1_lr=3e-3), progress=False)
    assert state["complete"] and "frozen-prefix cache is off" in caplog.text
    assert state["cache"] == {"off": "train_base: the base model trains"} and state["peak_rss_mb"] > 0
    losses = [h["loss"] for h in state["history"]]
    assert sum(losses[-3:]) < sum(losses[:3])
    assert (out / BASE_FILE).is_file()
    ck = load_checkpoint(out)
    assert ck.model.adapted_layers == [2] and ck.mta_config.task_groups is not None
    assert ck.model.blocks["2"].mixture.logits.shape == (ck.mta_config.num_routes, 5)
    assert ck.base_trained and ck.base_sha256 != ck.base_info.sha256
    fresh, _, _ = load_base_model(str(trainable_llama_dir))
    trained = dict(ck.model.base.named_parameters())
    moved = [n for n, p in fresh.named_parameters() if n in trained and not torch.equal(p, trained[n])]
    assert any("layers.0." in n for n in moved)  # a block below the adapted one changed: the base trained
    manifest = _export(out, tmp_path / "bundle", tasks="all", int8=True)
    assert {g["mode"] for g in manifest["graphs"]} == {"multitask", "task"}
    # the bundle is hashed as the fine-tuned base it was built from, not the original
    assert manifest["base_model"]["sha256"] == ck.base_sha256 and manifest["base_model"]["fine_tuned"] is True


@pytest.mark.parametrize("name", ["poly", "hydra"])
def test_mixture_variant_presets_train_and_export(name, trainable_llama_dir, tiny_data, tmp_path):
    out = tmp_path / name
    cfg = _preset_cfg(name, trainable_llama_dir, stage1_steps=20, stage1_lr=5e-3)
    cfg.mta["num_top_layers"] = 2
    state = run_training(tiny_data, out, cfg, progress=False)
    assert state["complete"]
    ck = load_checkpoint(out)
    if name == "poly":
        b = next(iter(ck.model.blocks.values()))
        assert b.mixture.scale == float(ck.mta_config.num_adapters)
        w = b.mixture(torch.tensor([0, 1]))
        assert torch.allclose(w.sum(-1), torch.full((2,), b.mixture.scale))
        assert not torch.allclose(b.mixture.logits, torch.zeros_like(b.mixture.logits))  # the mixture trained
    manifest = _export(out, tmp_path / "bundle", tasks="all", int8=True, int8_budget=100.0, min_top1_int8=0.0)
    assert {g["mode"] for g in manifest["graphs"]} == {"multitask", "task"}


def test_mixture_learns_at_its_own_rate():
    from alter_edge.training.trainer import _param_groups

    class M:
        def __init__(self):
            self.a, self.m = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))

        def parameter_groups(self):
            return {"adapters": [self.a], "mixture": [self.m]}

    m = M()
    groups = _param_groups(m, [m.a, m.m], 100.0)
    assert [g["lr_scale"] for g in groups] == [1.0, 100.0] and groups[1]["params"] == [m.m]
    assert len(_param_groups(m, [m.a, m.m], 1.0)) == 1 and len(_param_groups(m, [m.a], 100.0)) == 1


def test_every_preset_builds_its_configs():
    for name in PRESETS:
        cfg = TrainConfig(**train_kwargs(name, {}, {}))
        MTAConfig(num_tasks=4, **{k: v for k, v in cfg.mta.items()})
