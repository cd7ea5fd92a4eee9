"""What stage 2 learned: each adapted block's per-task mixture, prior vs trained.

Reads only the checkpoint's JSON and safetensors (no base model), prints for every block
the weights ``softmax(logits / temperature)`` per task next to the prior the run started
from, and a summary: the mean weight a task puts on its own adapter, on the shared
adapter(s) and on the other tasks' adapters.

    python benchmarks/mixture_report.py runs/full

A checkpoint trained with the per-token gate (``gate = "token"``) mixes per position, so its
mixture is only known on text: ``--tokens DEV.jsonl`` runs the model over those rows (prompt
and target, teacher-forced; needs the base model) and reports, per block and task, the mean
per-token weights and how far they move from the task-only mixture (total variation, and the
share of tokens whose top adapter differs).

    python benchmarks/mixture_report.py runs/results-v2/mta_gate-s0/checkpoint --tokens runs/results-v2/dev.jsonl
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
    per_task = [_own_shared_foreign(w[t], t, cfg) for t in range(w.shape[0])]
    own, shared = (sum(x[j] for x in per_task) / len(per_task) for j in (0, 1))
    return own, shared, 1.0 - own - shared


def token_gate_report(checkpoint: Path, data: Path, max_rows: int) -> None:
    """Per block and task: mean per-token mixture, and its distance from the task-only one."""
    from alter_edge.data import load_jsonl
    from alter_edge.prompts import encode_example
    from alter_edge.training.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    model, cfg = ck.model.eval(), ck.mta_config
    if cfg.gate != "token":
        raise SystemExit(f"{checkpoint}: gate is {cfg.gate!r}; --tokens reports the per-token gate only")
    rows = load_jsonl(data)[: max_rows or None]
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [b.register_forward_hook(lambda mod, a, o, i=i: seen.setdefault(i, []).append(mod.weights()[0]))
             for i, b in model.blocks.items()]
    per_row_task = []
    with torch.no_grad():
        for r in rows:
            spec = ck.tasks.get(r.task)
            p, t = encode_example(ck.tokenizer, spec, r.input, r.target, ck.eos_id,
                                  ck.train_config.max_prompt_tokens)
            ids = torch.tensor([p + t])
            model(ids, torch.ones_like(ids), torch.tensor([spec.id]))
            per_row_task.append(spec.id)
    for h in hooks:
        h.remove()
    names = ck.tasks.names
    width = max(len(n) for n in names)
    print(f"per-token gate over {len(rows)} rows of {data} (prompt + target tokens)")
    print(f"{'block':<7}{'task':<{width + 2}}{'own':>7}{'shared':>8}{'foreign':>9}{'TV mean':>9}{'TV p90':>8}"
          f"{'top moved':>11}")
    tv_all = {n: [] for n in names}
    for i, b in model.blocks.items():
        for t, name in enumerate(names):
            w_task = b.mixture.weights_for(t)  # (K,): the task-only mixture
            ws = [w for w, tid in zip(seen[i], per_row_task, strict=True) if tid == t]
            if not ws:
                continue
            w = torch.cat(ws).float()  # (tokens, K)
            tv = 0.5 * (w - w_task).abs().sum(-1)
            moved = (w.argmax(-1) != w_task.argmax()).float().mean().item()
            own, shared, foreign = _own_shared_foreign(w.mean(0), t, cfg)
            tv_all[name].append(tv)
            print(f"{i:<7}{name:<{width + 2}}{own:>7.3f}{shared:>8.3f}{foreign:>9.3f}{tv.mean().item():>9.3f}"
                  f"{tv.quantile(0.9).item():>8.3f}{moved:>10.1%}")
    print("\nall blocks: mean total variation from the task-only mixture per token")
    for name, tvs in tv_all.items():
        if tvs:
            print(f"  {name:<{width}} {torch.cat(tvs).mean().item():.3f}")


def _own_shared_foreign(w: torch.Tensor, t: int, cfg: MTAConfig) -> tuple[float, float, float]:
    """One task's (own, shared, foreign) weights under the own_shared layout; w: (K,)."""
    n_own = int(cfg.num_adapters) - cfg.num_shared
    own = w[t % n_own].item() if n_own else 0.0
    shared = w[n_own:].sum().item() if cfg.num_shared else 0.0
    return own, shared, 1.0 - own - shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--tokens", type=Path, metavar="JSONL",
                    help="report the per-token gate over these rows (a gate='token' checkpoint)")
    ap.add_argument("--max-rows", type=int, default=0, help="with --tokens: the first N rows only (0 = all)")
    args = ap.parse_args()
    if args.tokens:
        token_gate_report(args.checkpoint, args.tokens, args.max_rows)
        return
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
