"""Data-parallel training with torch.distributed: the trainer's one loop, N processes.

    torchrun --nproc-per-node 2 -m alter_edge.cli train --distributed --data tasks.jsonl --out runs/mta

Every rank runs ``run_training`` with a :class:`TorchDistributed` collective: it takes a
strided share of every global batch (the single-process schedule, unchanged), weights each
row's loss by ``1 / global batch size`` so that the all-reduced SUM of the gradients is the
single-process gradient, and all ranks then clip and step identically, so they stay in sync.
This is DistributedDataParallel's gradient all-reduce done explicitly, in one flat bucket per
step: the loop calls ``MTAModel.logits_at``, not ``forward``, which DDP's wrapper would need.
Rank 0 alone writes checkpoints (atomically, as a single process does) and runs the dev
evaluation; the frozen-prefix cache and the base model are built by rank 0 first, then read
from disk by the others (a node without that disk builds its own).

The trainer runs on the CPU, so the backend is gloo.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist

from alter_edge.errors import ConfigError

log = logging.getLogger(__name__)


class Collective:
    """One process: every hook is the identity (what ``run_training`` uses by default)."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: Sequence[int]) -> list[int]:
        """This rank's rows of a global batch."""
        return list(idx)

    def reduce_grads(self, params: Sequence[torch.nn.Parameter], loss: float) -> float:
        """Sum the ranks' gradients (and losses) into every rank; returns the global loss."""
        return loss

    def sync_params(self, tensors: Sequence[torch.Tensor]) -> None:
        """Make every rank start from rank 0's values."""

    def barrier(self) -> None:
        pass

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it fills disk caches), the other ranks after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


class TorchDistributed(Collective):
    """A torch.distributed process group (gloo) of ``world_size`` ranks."""

    def __init__(self, rank: int, world_size: int, init_method: str = "env://",
                 timeout_minutes: float = 120.0):
        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed")
        self.rank, self.world_size = rank, world_size
        if not dist.is_initialized():
            # the long timeout covers rank 0 building the prefix cache and evaluating alone
            dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(minutes=timeout_minutes))
        log.info("rank %d of %d", rank, world_size)

    @classmethod
    def from_env(cls) -> TorchDistributed:
        """The rank and world size torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ConfigError(f"distributed training needs {', '.join(missing)} in the environment: "
                               "start every rank with torchrun (docs/training.md)")
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))

    def shard(self, idx: Sequence[int]) -> list[int]:
        return list(idx[self.rank :: self.world_size])  # strided: batches are length-sorted

    def reduce_grads(self, params: Sequence[torch.nn.Parameter], loss: float) -> float:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [torch.tensor([loss])])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        off = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[off : off + n].view_as(p).to(p.dtype)
            off += n
        return float(flat[-1])

    def sync_params(self, tensors: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["Collective", "TorchDistributed"]
