"""Data-parallel training (training/distributed.py): 2 gloo ranks, each with its share of every
global batch, end with the single-process run's adapters, also across a --resume."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from alter_edge.config import TrainConfig
from alter_edge.training.distributed import Collective, TorchDistributed
from alter_edge.training.trainer import run_training

pytestmark = pytest.mark.distributed

# fp32: the ranks pad their shares differently and sum the gradient in another order; AdamW turns
# those ~1e-7 gradient differences into up to ~5e-6 on the weights here after 11 steps, while
# averaging instead of summing the ranks' gradients (plain DDP on these loss weights) gives 5e-3
TOL = 5e-5


def _cfg(base) -> TrainConfig:
    # batch 7: the two ranks get 4 and 3 rows, so an unweighted mean per rank would fail
    return TrainConfig(base_model=str(base), stage1_steps=8, stage2_steps=3, batch_size=7, stage1_lr=5e-3,
                       stage2_lr=5e-2, save_every=3, eval_max_rows=3, eval_max_new_tokens=2,
                       compute_dtype="float32", mta={"num_top_layers": 2, "adapter_kind": "lora"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, data, out, base) -> None:
    torch.set_num_threads(1)
    coll = TorchDistributed(rank, world, init_method=f"tcp://127.0.0.1:{port}")
    try:
        cfg = _cfg(base)
        part = run_training(data, out, cfg, progress=False, stop_after=5, collective=coll)
        assert part["step"] == 5 and not part["complete"]
        done = run_training(data, out, cfg, resume=True, progress=False, collective=coll)
        assert done["complete"]
    finally:
        coll.close()


def _initial_adapters(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The adapters run_training starts from (same seed, same order of random draws)."""
    from alter_edge.base_model import load_base_model
    from alter_edge.config import MTAConfig
    from alter_edge.inject import MTAModel

    torch.manual_seed(cfg.seed)
    base, _, _ = load_base_model(cfg.base_model)
    return MTAModel(base, MTAConfig(num_tasks=3, **cfg.mta)).mta_state_dict()


def test_two_ranks_equal_one_process(trainable_llama_dir, tiny_data, tmp_path):
    single = run_training(tiny_data, tmp_path / "one", _cfg(trainable_llama_dir), progress=False)
    out = tmp_path / "two"
    mp.spawn(_rank, args=(2, _free_port(), tiny_data, out, trainable_llama_dir), nprocs=2, join=True)
    a = load_file(str(tmp_path / "one" / "adapters.safetensors"))
    b = load_file(str(out / "adapters.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < TOL, f"max |single - 2 ranks| = {worst:.2e}"
    init = _initial_adapters(_cfg(trainable_llama_dir))
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    assert moved > 1000 * TOL, f"training moved the adapters by only {moved:.2e}"
    state = json.loads((out / "state.json").read_text())
    assert state["complete"] and not (out / "optimizer.pt").exists()
    two = [h["loss"] for h in state["history"]]
    one = [h["loss"] for h in single["history"]]
    assert len(two) == len(one) == 11
    assert max(abs(x - y) for x, y in zip(one, two, strict=True)) < 1e-4
    assert state["evals"].keys() == single["evals"].keys()  # rank 0 evaluated each stage
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".two")]  # no temp dirs left


def test_shares_cover_each_batch_once():
    class Fake(TorchDistributed):
        def __init__(self, rank, world):  # no process group: only the sharding
            self.rank, self.world_size = rank, world

    idx = list(range(10, 17))
    shares = [Fake(r, 3).shard(idx) for r in range(3)]
    assert sorted(sum(shares, [])) == idx and [len(s) for s in shares] == [3, 2, 2]
    assert Collective().shard(idx) == idx


def test_from_env_names_what_is_missing(monkeypatch):
    from alter_edge.errors import ConfigError

    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError, match="RANK, WORLD_SIZE.*torchrun"):
        TorchDistributed.from_env()
