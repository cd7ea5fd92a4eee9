"""Dev-split quality of training variants over several seeds, from one data file.

Each (variant, seed) is an ordinary ``run_training`` into ``--runs DIR/<variant>-s<seed>``;
finished runs are not retrained (delete a run directory to redo it), so the script can be
stopped and started again. Prints per-task dev scores, the overall score (mean over task
groups) as mean +- std over seeds, trainable parameters, wall time and peak RSS.

    python benchmarks/quality.py --data ../shared/data/alter-mix/train.jsonl --seeds 0 1 2 \
        --variants mta shared_lora
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

from alter_edge.config import TrainConfig

# Every variant sees the same examples: same steps, batch size and sampling.
VARIANTS: dict[str, dict] = {
    "mta": {},  # the defaults: two stages, K = tasks + 1 shared
    "mta_one_stage": {"stages": 1},
    "shared_lora": {"mta": {"num_adapters": 1}},  # one LoRA for every task, same code
    "hard_routing": {"mta": {"num_shared": 0, "prior_strength": 50.0}},  # mixture fixed one-hot
    "mta_ffn": {"mta": {"adapter_kind": "ffn"}},
}


def variant_config(name: str, seed: int, base: dict) -> TrainConfig:
    v = json.loads(json.dumps(VARIANTS[name]))
    mta = {**base.get("mta", {}), **v.pop("mta", {})}
    cfg = {**base, **v, "seed": seed, "mta": mta}
    # Variants without a mixture to learn spend the whole budget in one adapter stage, so
    # every variant sees the same number of examples.
    if name in ("mta_one_stage", "hard_routing", "shared_lora"):
        cfg["stage1_steps"] = base.get("stage1_steps", TrainConfig().stage1_steps) + base.get(
            "stage2_steps", TrainConfig().stage2_steps)
        cfg["stage2_steps"] = 0
    return TrainConfig(**cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--runs", default="runs/quality")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["mta", "shared_lora"], choices=sorted(VARIANTS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a TrainConfig field for every variant, e.g. --set stage1_steps=100 "
                         "--set 'mta={\"num_top_layers\": 6}'")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    from alter_edge.training.trainer import run_training

    base: dict = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        base[k] = json.loads(v)
    results = {}
    for name in args.variants:
        for seed in args.seeds:
            cfg = variant_config(name, seed, base)
            out = Path(args.runs) / f"{name}-s{seed}"
            state_file = out / "state.json"
            if state_file.is_file() and json.loads(state_file.read_text()).get("complete"):
                state = json.loads(state_file.read_text())
            else:
                t0 = time.perf_counter()
                state = run_training(Path(args.data) if args.data else None, out, cfg,
                                     resume=state_file.is_file(), progress=not args.quiet)
                state["wall_s"] = round(time.perf_counter() - t0, 1)
                state["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            final = state["evals"][list(state["evals"])[-1]]
            results[(name, seed)] = {"final": final, "state": state}
            print(f"{name} seed {seed}: overall {final['overall']:.3f} {final['per_task']}", flush=True)
    print()
    tasks = sorted({t for r in results.values() for t in r["final"]["per_task"]})
    print(f"{'variant':<16}" + "".join(f"{t[:13]:>14}" for t in tasks) + f"{'overall':>16}{'trainable':>11}")
    for name in args.variants:
        runs = [results[(name, s)] for s in args.seeds]
        cells = []
        for t in tasks:
            vals = [r["final"]["per_task"].get(t, float("nan")) for r in runs]
            cells.append(f"{statistics.mean(vals):>14.3f}")
        ov = [r["final"]["overall"] for r in runs]
        sd = statistics.stdev(ov) if len(ov) > 1 else 0.0
        params = runs[0]["state"].get("parameters", {})
        n_train = params.get("adapters", 0) + params.get("mixture", 0)
        print(f"{name:<16}" + "".join(cells) + f"{statistics.mean(ov):>9.3f} ± {sd:.3f}{n_train:>11,}")


if __name__ == "__main__":
    main()
