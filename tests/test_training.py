"""Training: loss falls, checkpoints round-trip, resume equals an uninterrupted run,
stage semantics, and bad output directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alter_edge.config import TrainConfig
from alter_edge.errors import CheckpointError, ConfigError
from alter_edge.training.checkpoint import load_checkpoint
from alter_edge.training.trainer import batch_schedule, run_training, stage_pools, task_probs


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTER_EDGE_CACHE", str(tmp_path / "cache"))


def _cfg(base, **kw):
    d = dict(base_model=str(base), stage1_steps=30, stage2_steps=10, batch_size=8, stage1_lr=5e-3,
             stage2_lr=5e-2, save_every=5, eval_max_rows=6, eval_max_new_tokens=4,
             mta={"num_top_layers": 2, "adapter_kind": "lora"})
    d.update(kw)
    return TrainConfig(**d)


def test_loss_falls_and_checkpoint_is_complete(trainable_llama_dir, tiny_data, tmp_path):
    out = tmp_path / "run"
    state = run_training(tiny_data, out, _cfg(trainable_llama_dir, stage1_steps=60), progress=False)
    losses = [h["loss"] for h in state["history"] if h["stage"] == "stage1"]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert state["complete"] and set(state["evals"]) == {"stage1", "stage2"}
    assert not (out / "optimizer.pt").exists()
    ck = load_checkpoint(out)
    assert ck.tasks.names == ["colour", "echo", "parity"]
    assert ck.tasks.get("parity").kind == "classify" and ck.tasks.get("echo").kind == "generate"
    saved = load_file(str(out / "adapters.safetensors"))
    own = ck.model.mta_state_dict()
    assert saved.keys() == own.keys()
    assert all(torch.equal(saved[k], own[k]) for k in saved)


def test_two_stage_semantics(trainable_llama_dir, tiny_data, tmp_path):
    """Stage 1 keeps the mixture at its prior; stage 2 keeps the adapters where stage 1 left them
    (no guard rows, so both runs' stage 1 trains on the same rows and stage 2 always keeps)."""
    cfg = _cfg(trainable_llama_dir, stage2_guard=0.0)
    one = run_training(tiny_data, tmp_path / "s1", _cfg(trainable_llama_dir, stage2_steps=0), progress=False)
    assert one["complete"]
    after1 = load_checkpoint(tmp_path / "s1").model
    run_training(tiny_data, tmp_path / "s2", cfg, progress=False)
    after2 = load_checkpoint(tmp_path / "s2").model
    from alter_edge.mta import prior_logits

    prior = prior_logits(after1.cfg)
    for b in after1.blocks.values():
        assert torch.equal(b.mixture.logits.detach(), prior)
    g1, g2 = after1.parameter_groups(), after2.parameter_groups()
    for a, b in zip(g1["adapters"], g2["adapters"], strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(m.detach(), prior) for m in g2["mixture"])


def test_one_stage_trains_mixture_and_adapters_together():
    plan = TrainConfig(stages=1, stage1_steps=7, stage2_steps=3).stage_plan()
    assert len(plan) == 1 and set(plan[0].trains) == {"adapters", "mixture"} and plan[0].steps == 10
    with pytest.raises(ConfigError):
        TrainConfig(stages=3)


def test_resume_equals_uninterrupted(trainable_llama_dir, tiny_data, tmp_path):
    cfg = _cfg(trainable_llama_dir)
    run_training(tiny_data, tmp_path / "full", cfg, progress=False)
    part = run_training(tiny_data, tmp_path / "cut", cfg, progress=False, stop_after=13)
    assert not part["complete"] and (tmp_path / "cut" / "optimizer.pt").exists()
    with pytest.raises(CheckpointError, match="`resume`"):
        run_training(tiny_data, tmp_path / "cut", cfg, progress=False)
    part = run_training(tiny_data, tmp_path / "cut", cfg, resume=True, progress=False, stop_after=25)
    assert not part["complete"] and part["stage"] == 1  # crossed into stage 2
    done = run_training(tiny_data, tmp_path / "cut", cfg, resume=True, progress=False)
    assert done["complete"]
    a = load_file(str(tmp_path / "full" / "adapters.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapters.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_out_dir_guards(trainable_llama_dir, tiny_data, tmp_path):
    cfg = _cfg(trainable_llama_dir, stage1_steps=2, stage2_steps=1)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not an alter-edge run"):
        run_training(tiny_data, other, cfg, progress=False)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run_training(tiny_data, tmp_path / "nope", cfg, resume=True, progress=False)
    run_training(tiny_data, tmp_path / "r", cfg, progress=False, stop_after=1)
    with pytest.raises(CheckpointError, match="different settings.*seed: started with 0, now 5"):
        run_training(tiny_data, tmp_path / "r", _cfg(trainable_llama_dir, stage1_steps=2, stage2_steps=1, seed=5),
                     resume=True, progress=False)
    # micro-batching does not change what the run computes: it may resume with another value
    state = run_training(tiny_data, tmp_path / "r", _cfg(trainable_llama_dir, stage1_steps=2, stage2_steps=1,
                                                         micro_batch_tokens=64), resume=True, progress=False)
    assert state["complete"]


def test_checkpoint_from_other_base_is_refused(trainable_llama_dir, tiny_data, tmp_path, tiny_tokenizer_dir):
    from alter_edge.testing import make_tiny_base

    run_training(tiny_data, tmp_path / "r", _cfg(trainable_llama_dir, stage1_steps=2, stage2_steps=1), progress=False)
    other = make_tiny_base("llama", tmp_path / "other-base", tiny_tokenizer_dir, seed=1)
    with pytest.raises(CheckpointError, match="matching `base_model`"):
        load_checkpoint(tmp_path / "r", base_model=str(other))
    (tmp_path / "r" / "tasks.json").unlink()
    with pytest.raises(CheckpointError, match="missing tasks.json"):
        load_checkpoint(tmp_path / "r")


def test_stage2_holdout_keeps_rows_away_from_stage1(trainable_llama_dir, tiny_data, tmp_path):
    """stage2_holdout: stage 1 never draws the held-out rows, stage 2 draws only them, every
    task keeps rows on both sides; without it both stages draw from every row."""
    from alter_edge.data import load_jsonl
    from alter_edge.training.batching import Encoded

    rows = load_jsonl(tiny_data)
    cfg = _cfg(trainable_llama_dir, stage2_holdout=0.25, stage2_guard=0.0)
    (s1, s2), guard = stage_pools(rows, cfg, 2)
    assert sorted(s1 + s2) == list(range(len(rows))) and not set(s1) & set(s2) and guard == []
    tasks = {r.task for r in rows}
    assert {rows[i].task for i in s1} == tasks == {rows[i].task for i in s2}
    assert len(s2) == sum(round(sum(r.task == t for r in rows) * 0.25) for t in tasks)
    assert stage_pools(rows, _cfg(trainable_llama_dir, stage2_guard=0.0), 2) == ([None, None], [])
    # the guard rows: trained on by neither stage, every task among them
    (g1, g2), guard = stage_pools(rows, _cfg(trainable_llama_dir, stage2_holdout=0.25, stage2_guard=0.2), 2)
    assert guard and not set(guard) & (set(g1) | set(g2))
    assert sorted(g1 + g2 + guard) == list(range(len(rows))) and {rows[i].task for i in guard} == tasks
    assert stage_pools(rows, _cfg(trainable_llama_dir, stages=1), 1) == ([None], [])
    exs = [Encoded(sorted(tasks).index(r.task), [1, 2], [3]) for r in rows]
    for si, pool in enumerate((s1, s2)):
        stage = cfg.stage_plan()[si]
        drawn = {i for b in batch_schedule(exs, len(tasks), stage, si, 8, 0, pool) for i in b}
        assert drawn <= set(pool) and len(drawn) > len(pool) // 2
    state = run_training(tiny_data, tmp_path / "h", _cfg(trainable_llama_dir, stage1_steps=4, stage2_steps=2,
                                                        stage2_holdout=0.25), progress=False)
    assert state["complete"] and set(state["evals"]) == {"stage1", "stage2"}
    for bad in ({"stages": 1}, {"stage2_steps": 0}, {"stage2_holdout": 1.0}, {"stage2_holdout": -0.1}):
        with pytest.raises(ConfigError, match="stage2_holdout"):
            TrainConfig(**{"stage2_holdout": 0.1, **bad})


def test_task_sampling_balanced_and_bucketed():
    from alter_edge.config import StageConfig
    from alter_edge.training.batching import Encoded

    assert task_probs([940, 681, 208, 171], 0.0) == pytest.approx([0.25] * 4)
    p = task_probs([940, 171], 1.0)
    assert p[0] == pytest.approx(940 / 1111)
    exs = [Encoded(0, [1] * (i % 13 + 1), [2]) for i in range(90)] + [Encoded(1, [1] * 5, [2]) for _ in range(10)]
    stage = StageConfig("s", ["adapters"], steps=40, lr=1e-3)
    sched = batch_schedule(exs, 2, stage, 0, 8, seed=3)
    assert sched == batch_schedule(exs, 2, stage, 0, 8, seed=3)
    tasks = [exs[i].task_id for b in sched for i in b]
    assert 0.4 < sum(tasks) / len(tasks) < 0.6  # balanced although task 1 has 10% of rows
    spread = [max(len(exs[i].ids) for i in b) - min(len(exs[i].ids) for i in b) for b in sched]
    assert sum(spread) / len(spread) < 6  # random batches would average ~11


def test_state_history_is_json(trainable_llama_dir, tiny_data, tmp_path):
    run_training(tiny_data, tmp_path / "r", _cfg(trainable_llama_dir, stage1_steps=3, stage2_steps=2), progress=False)
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert [h["stage"] for h in state["history"]] == ["stage1"] * 3 + ["stage2"] * 2


def test_padding_to_a_multiple_leaves_the_loss_unchanged(tiny_llama_dir, monkeypatch):
    """Batches are padded to PAD_MULTIPLE tokens to keep memory flat; the extra positions
    are masked and carry no target, so the loss and its gradients must not move."""
    import alter_edge.training.batching as trainer_mod
    from alter_edge.base_model import load_base_model
    from alter_edge.config import MTAConfig
    from alter_edge.inject import MTAModel
    from alter_edge.training.memory import PAD_MULTIPLE, trim_heap

    base, _, _ = load_base_model(str(tiny_llama_dir))
    model = MTAModel(base, MTAConfig(num_tasks=2, num_top_layers=2, init_std=0.2))
    V = base.config.vocab_size
    params = model.set_trainable(["adapters", "mixture"])
    g = torch.Generator().manual_seed(0)
    ex = [trainer_mod.Encoded(i % 2, torch.randint(3, V, (5 + 3 * i,), generator=g).tolist(),
                              torch.randint(3, V, (1 + i,), generator=g).tolist()) for i in range(4)]
    cache = [model.prefix_hidden(torch.tensor([e.ids]), torch.ones(1, len(e.ids), dtype=torch.long))[0]
             for e in ex]

    def loss_and_grads(multiple: int):
        monkeypatch.setattr(trainer_mod, "PAD_MULTIPLE", multiple)
        model.zero_grad(set_to_none=True)
        loss = trainer_mod.batch_loss(model, ex, [0, 1, 2, 3], 0, cache, layout="padded")
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    (l1, g1), (l32, g32) = loss_and_grads(1), loss_and_grads(PAD_MULTIPLE)
    assert PAD_MULTIPLE > max(len(e.ids) for e in ex)  # the second run really pads
    assert torch.allclose(l1, l32, atol=1e-5)
    for a, b in zip(g1, g32, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert trim_heap() is True  # glibc (Linux CI): the trim really runs


def test_micro_batches_give_the_whole_batch_gradients(tiny_llama_dir):
    """A batch run in parts of at most N padded tokens accumulates the same loss and gradients
    as the whole batch at once, with and without the prefix cache; a batch that fits is one part
    in its own order."""
    import alter_edge.training.batching as trainer_mod
    from alter_edge.base_model import load_base_model
    from alter_edge.config import MTAConfig
    from alter_edge.inject import MTAModel
    from alter_edge.training.memory import PAD_MULTIPLE

    base, _, _ = load_base_model(str(tiny_llama_dir))
    model = MTAModel(base, MTAConfig(num_tasks=2, num_top_layers=2, init_std=0.2))
    V = base.config.vocab_size
    params = model.set_trainable(["adapters", "mixture"])
    g = torch.Generator().manual_seed(1)
    lens = [5, 40, 12, 70, 33, 8, 64]  # padded to 32, 64, 32, 96, 64, 32, 64
    ex = [trainer_mod.Encoded(i % 2, torch.randint(3, V, (n,), generator=g).tolist(),
                              torch.randint(3, V, (1 + i % 3,), generator=g).tolist()) for i, n in enumerate(lens)]
    idx = list(range(len(ex)))
    cache = [model.prefix_hidden(torch.tensor([e.ids]), torch.ones(1, len(e.ids), dtype=torch.long))[0]
             for e in ex]
    parts = trainer_mod.micro_batches(ex, idx, 128, layout="padded")
    assert sorted(i for p in parts for i in p) == idx and len(parts) >= 3
    for p in parts:  # every part within the budget, or a single row
        longest = max(-(-len(ex[i].ids) // PAD_MULTIPLE) * PAD_MULTIPLE for i in p)
        assert len(p) * longest <= 128 or len(p) == 1
    assert trainer_mod.micro_batches(ex, idx, 0, layout="padded") == [idx]
    assert trainer_mod.micro_batches(ex, idx, 7 * 96, layout="padded") == [idx]
    packed = trainer_mod.micro_batches(ex, idx, 200, layout="packed", lane_tokens=96)
    assert sorted(i for p in packed for i in p) == idx and len(packed) >= 2
    for layout in ("padded", "packed"):
        for c in (cache, None):
            got = {}
            for budget in (0, 128, 1):  # whole, a few parts, one row (or lane) per part
                model.zero_grad(set_to_none=True)
                loss = trainer_mod.accumulate_batch(model, ex, idx, 0, c, "float32", budget, layout=layout,
                                                    lane_tokens=96)
                got[budget] = (loss, [p.grad.clone() for p in params])
            for budget in (128, 1):
                assert got[budget][0] == pytest.approx(got[0][0], abs=1e-5)
                for a, b in zip(got[0][1], got[budget][1], strict=True):
                    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ConfigError, match="micro_batch_tokens must be >= 0"):
        TrainConfig(micro_batch_tokens=-1)


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_follows_the_cpu_and_is_recorded(trainable_llama_dir, tiny_data, tmp_path, monkeypatch,
                                                    native):
    """compute_dtype auto (the default) trains in bfloat16 only where the CPU has native bf16;
    the dtype a run used is in its state, and the autocast really follows it."""
    import alter_edge.training.batching as trainer_mod
    import alter_edge.training.precision as cache_mod

    monkeypatch.setattr(cache_mod, "native_bf16", lambda: native)
    seen = []
    real_loss = trainer_mod.batch_loss

    def spy(*a, **kw):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return real_loss(*a, **kw)

    monkeypatch.setattr(trainer_mod, "batch_loss", spy)
    assert TrainConfig().compute_dtype == "auto"
    state = run_training(tiny_data, tmp_path / "r", _cfg(trainable_llama_dir, stage1_steps=2, stage2_steps=1),
                         progress=False)
    want = "bfloat16" if native else "float32"
    assert state["compute_dtype"] == want
    assert seen == [getattr(torch, want)] * 3
    assert json.loads((tmp_path / "r" / "state.json").read_text())["compute_dtype"] == want


def test_dtype_resolution_and_errors(monkeypatch, caplog):
    import alter_edge.training.precision as cache_mod

    monkeypatch.setattr(cache_mod, "native_bf16", lambda: False)
    monkeypatch.setattr(cache_mod, "_warned_emulated", False)
    assert cache_mod.resolve_dtype("auto") == "float32"
    assert cache_mod.resolve_dtype("float32") == "float32"
    with caplog.at_level("WARNING"):
        assert cache_mod.resolve_dtype("bfloat16") == "bfloat16"  # asked for explicitly: kept
    assert "no native bfloat16" in caplog.text
    monkeypatch.setattr(cache_mod, "native_bf16", lambda: True)
    assert cache_mod.resolve_dtype("auto") == "bfloat16"
    with pytest.raises(ValueError, match="allowed are auto, bfloat16, float32"):
        cache_mod.resolve_dtype("float16")
    with pytest.raises(ConfigError, match="must be auto, bfloat16 or float32"):
        TrainConfig(compute_dtype="fp8")


_BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _memory_bench():
    from alter_edge.testing import load_script

    return load_script(_BENCH / "memory_bench.py", "memory_bench")


def test_lazy_trim_trims_only_on_growth(monkeypatch):
    """LazyTrim sets its level one call after a trim and trims again only once RSS has
    crept slack above it; slack 0 trims on every call, as the trainer did before."""
    mem = _memory_bench()

    rss = iter([100, 150, 190, 260, 90, 95, 120, 400, 1, 1, 1])  # MiB, one reading per call
    calls = []
    monkeypatch.setattr(mem, "rss_bytes", lambda: next(rss) * 2**20)
    monkeypatch.setattr(mem, "trim_heap", lambda: calls.append(1) or True)
    lazy = mem.LazyTrim(slack_mb=100)
    got = [lazy() for _ in range(8)]
    # 100 sets the level; 150, 190 are under 100+100; 260 trims; 90 sets the level again;
    # 95, 120 are under 190; 400 trims
    assert got == [False, False, False, True, False, False, False, True]
    assert lazy.trims == len(calls) == 2
    eager = mem.LazyTrim(slack_mb=0)
    assert [eager() for _ in range(3)] == [True, True, True] and eager.trims == 3


@pytest.mark.parametrize("keep", [False, True])
def test_keep_heap_keeps_freed_pages_for_the_next_step(keep):
    """memory_bench's keep_heap: a freed 64 MB activation stays resident for the next step to reuse (no
    fresh pages to fault in); by default glibc maps it with mmap and unmaps it on free.
    In a child process: mallopt is process-wide."""
    setup = "assert mb.keep_heap() is True" if keep else "pass"
    code = (
        "import importlib.util, torch\n"
        f"spec = importlib.util.spec_from_file_location('mb', {str(_BENCH / 'memory_bench.py')!r})\n"
        "mb = importlib.util.module_from_spec(spec); spec.loader.exec_module(mb)\n"
        "from alter_edge.training.memory import rss_bytes\n"
        f"{setup}\n"
        "a = torch.ones(16 * 2**20)\n"  # 64 MB, one allocation
        "before = rss_bytes()\n"
        "del a\n"
        "print((before - rss_bytes()) / 2**20)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    released_mb = float(out.stdout.split()[-1])
    if keep:
        assert released_mb < 8, released_mb
    else:
        assert released_mb > 56, released_mb


@pytest.mark.parametrize("gate", ["task", "token"])
def test_packed_rows_equal_padded_rows(tiny_llama_dir, gate):
    """Rows packed into lanes (positions restarting per row, block-diagonal attention, a task id
    per token) give the padded batch's loss and adapter/mixture gradients, with and without the
    prefix cache; a lane really holds rows of different tasks."""
    from alter_edge.base_model import load_base_model
    from alter_edge.config import MTAConfig
    from alter_edge.inject import MTAModel
    from alter_edge.training.batching import Encoded, batch_loss, layout_rows, pack_lanes

    base, _, _ = load_base_model(str(tiny_llama_dir))
    model = MTAModel(base, MTAConfig(num_tasks=3, num_top_layers=2, init_std=0.2, gate=gate))
    with torch.no_grad():
        for b in model.blocks.values():
            b.mixture.logits.normal_(std=0.3)
            if b.gate_weight is not None:
                b.gate_weight.normal_(std=0.5)
    params = model.set_trainable(["adapters", "mixture"])
    V = base.config.vocab_size
    g = torch.Generator().manual_seed(3)
    lens = [9, 30, 4, 17, 25, 6, 40, 11]
    ex = [Encoded(i % 3, torch.randint(3, V, (n,), generator=g).tolist(),
                  torch.randint(3, V, (1 + i % 4,), generator=g).tolist()) for i, n in enumerate(lens)]
    idx = [7, 0, 3, 5, 1, 6, 2, 4]
    packed = layout_rows(ex, idx, 0, "packed", lane_tokens=48)
    assert packed.ids.shape[0] < len(idx)  # fewer lanes than rows
    assert any(len({int(t) for t in row[:30]}) > 1 for row in packed.task_ids)  # tasks share a lane
    cache = [model.prefix_hidden(torch.tensor([e.ids]), torch.ones(1, len(e.ids), dtype=torch.long))[0]
             for e in ex]

    def loss_and_grads(layout, c):
        model.zero_grad(set_to_none=True)
        loss = batch_loss(model, ex, idx, 0, c, layout=layout, lane_tokens=48)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    for c in (cache, None):
        (lp, gp), (lq, gq) = loss_and_grads("padded", c), loss_and_grads("packed", c)
        assert torch.allclose(lp, lq, atol=1e-5)
        assert len(gp) == len(gq) > 0 and all(a.abs().sum() > 0 for a in gp[:2])
        for a, b in zip(gp, gq, strict=True):
            assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert pack_lanes([5, 3, 8, 2], 10) == [[2, 3], [0, 1]]
    assert pack_lanes([12, 3], 10) == [[0], [1]]  # a row longer than a lane gets its own


@pytest.mark.parametrize("helps", [True, False])
def test_stage2_keeps_its_mixture_only_when_the_guard_loss_falls(trainable_llama_dir, tiny_data, tmp_path,
                                                                  monkeypatch, helps):
    """Stage 2's mixture survives only if the loss on the guard rows (trained on by neither
    stage) went down; otherwise every block's mixture is back at stage 1's, and the state says
    which and why."""
    import alter_edge.training.trainer as trainer_mod
    from alter_edge.mta import prior_logits
    from alter_edge.training.checkpoint import load_checkpoint

    real = trainer_mod._guard_loss
    calls = []

    def guard_loss(run):
        calls.append(real(run))
        if len(calls) == 2 and not helps:  # pretend stage 2 made the guard rows worse
            return calls[0] + 1.0
        if len(calls) == 2 and helps:
            return calls[0] - 1.0
        return calls[-1]

    monkeypatch.setattr(trainer_mod, "_guard_loss", guard_loss)
    cfg = _cfg(trainable_llama_dir, stage1_steps=3, stage2_steps=3, stage2_lr=0.5, stage2_guard=0.2)
    state = run_training(tiny_data, tmp_path / "r", cfg, progress=False)
    g = state["stage2_guard"]
    assert len(calls) == 2 and g["rows"] > 0 and g["kept"] is helps
    assert g["loss_before"] == round(calls[0], 5) and ("improved" in g["why"]) is helps
    ck = load_checkpoint(tmp_path / "r")
    prior = prior_logits(ck.model.cfg)
    moved = [not torch.allclose(b.mixture.logits, prior) for b in ck.model.blocks.values()]
    assert all(moved) if helps else not any(moved)
    saved = json.loads((tmp_path / "r" / "state.json").read_text())["stage2_guard"]
    assert saved == g
