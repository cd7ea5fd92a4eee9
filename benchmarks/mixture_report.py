"""What stage 2 learned: each adapted block's per-task mixture, prior vs trained.

Reads only the checkpoint's JSON and safetensors (no base model), prints for every block
the weights ``softmax(logits / temperature)`` per task next to the prior the run started
from, and a summary: the mean weight a task puts on its own adapter, on the shared
adapter(s) and on the other tasks' adapters.

    python benchmarks/mixture_report.py runs/full
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from alter_edge.config import MTAConfig
from alter_edge.mta import prior_logits
from alter_edge.tasks import TaskRegistry
from alter_edge.training.checkpoint import read_checkpoint_meta


def summarize(w: torch.Tensor, cfg: MTAConfig) -> tuple[float, float, float]:
    """(own, shared, foreign) mean weights under the own_shared layout."""
    T, K = w.shape
    n_own = K - cfg.num_shared
    own = torch.stack([w[t, t % n_own] for t in range(T)]).mean().item() if n_own else 0.0
    shared = w[:, n_own:].sum(-1).mean().item() if cfg.num_shared else 0.0
    return own, shared, 1.0 - own - shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    args = ap.parse_args()
    meta = read_checkpoint_meta(args.checkpoint)
    cfg = MTAConfig.from_dict(meta["mta_config"])
    names = [t.name for t in TaskRegistry.load(args.checkpoint / "tasks.json")]
    state = load_file(str(args.checkpoint / "adapters.safetensors"))
    prior = torch.softmax(prior_logits(cfg) / cfg.temperature, -1)
    blocks = sorted((k for k in state if k.endswith("mixture.logits")), key=lambda k: [
        int(p) if p.isdigit() else 0 for p in k.split(".")])
    width = max(len(n) for n in names)
    print(f"K = {cfg.num_adapters} ({cfg.num_shared} shared, last), temperature {cfg.temperature}, "
          f"prior {cfg.prior} strength {cfg.prior_strength}")
    rows = [("prior", prior)] + [(k.removesuffix(".mixture.logits"), torch.softmax(state[k] / cfg.temperature, -1))
                                 for k in blocks]
    for label, w in rows:
        print(f"\n{label}")
        for t, name in enumerate(names):
            print(f"  {name:<{width}} " + " ".join(f"{x:.3f}" for x in w[t].tolist()))
    if cfg.prior == "own_shared" and cfg.num_adapters > 1:
        print(f"\n{'':<40}{'own':>7}{'shared':>8}{'foreign':>9}")
        for label, w in rows:
            own, shared, foreign = summarize(w, cfg)
            print(f"{label:<40}{own:>7.3f}{shared:>8.3f}{foreign:>9.3f}")


if __name__ == "__main__":
    main()
