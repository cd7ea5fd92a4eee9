"""Training throughput: frozen-prefix cache vs the plain full forward+backward, side by side.

Three ways to compute the same loss and adapter gradients, on the same batches (drawn by
the trainer's own schedule), run in turn for every batch (A B C A B C ...) so drift of the
shared machine hits all alike; prints medians and ratios:

- ``plain``: what a stock Hugging Face fine-tuning step does: the whole model, logits at
  every position, loss through ``labels`` (-100 outside the targets);
- ``full_target_logits``: the whole model, logits only at target positions;
- ``cached``: the trainer's path: blocks below the first adapted one skipped (their output
  read from the frozen-prefix cache), logits only at target positions.

It also times building the cache and reports its size.

    python benchmarks/train_bench.py --data ../shared/data/alter-mix/train.jsonl --steps 12

``--paths cached cached_token_gate`` measures what the learned per-token gate costs: the same
cached step on a second MTA model with ``gate = "token"`` (same adapters, on its own copy of
the base), both training adapters and mixture together as one-stage training does:

    python benchmarks/train_bench.py --data ../shared/data/alter-mix/train.jsonl --steps 16 \
        --max-rows 400 --top-layers 12 --lora-attention --paths cached cached_token_gate

``--compute-dtype float32 bfloat16`` times each path in both autocast dtypes, in turn on every
batch: whether bf16 pays off on this CPU (it needs AVX512-BF16 or AMX; ``auto`` decides so):

    python benchmarks/train_bench.py --data ../shared/data/alter-mix/train.jsonl --steps 8 \
        --max-rows 400 --top-layers 12 --lora-attention --paths cached --compute-dtype float32 bfloat16
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch

from alter_edge.base_model import load_base_model, special_ids
from alter_edge.config import MTAConfig, TrainConfig
from alter_edge.inject import MTAModel
from alter_edge.tasks import TaskRegistry
from alter_edge.training.cache import (
    autocast,
    build_prefix_cache,
    cache_bytes,
    native_bf16,
    resolve_dtype,
    right_pad,
)
from alter_edge.training.trainer import batch_loss, batch_schedule, encode_rows, load_data


def plain_loss(model: MTAModel, examples, idx, pad_id: int) -> torch.Tensor:
    """A stock causal-LM step: every position's logits, loss via ``labels``."""
    seqs = [examples[i].ids for i in idx]
    ids, mask = right_pad(seqs, pad_id)
    labels = torch.full_like(ids, -100)
    for j, i in enumerate(idx):
        e = examples[i]
        labels[j, len(e.prompt) : len(e.ids)] = torch.tensor(e.target)
    tids = torch.tensor([examples[i].task_id for i in idx], dtype=torch.long)
    return model(ids, mask, tids, labels=labels, use_cache=False).loss


PATHS = ("plain", "full_target_logits", "cached", "cached_token_gate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="JSONL task file (default: the built-in mix)")
    ap.add_argument("--base-model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=12, help="batches timed per path")
    ap.add_argument("--max-rows", type=int, default=0, help="use only this many training rows (0 = all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--top-layers", type=int, default=4)
    ap.add_argument("--kind", default="lora")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compute-dtype", nargs="+", default=["auto"], choices=["auto", "bfloat16", "float32"],
                    help="auto: bfloat16 where the CPU has native bf16, else float32; several: every path "
                         "is timed in each dtype, in turn on every batch (the cache is then kept in float32)")
    ap.add_argument("--lora-attention", action="store_true", help="lora on the attention projections too")
    ap.add_argument("--paths", nargs="+", default=list(PATHS[:3]), choices=PATHS,
                    help="what to time, in turn on every batch (the first is the ratios' reference)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = list(dict.fromkeys(resolve_dtype(d) for d in args.compute_dtype))
    dtype = dtypes[0]  # builds the cache
    cfg = TrainConfig(base_model=args.base_model, batch_size=args.batch_size, compute_dtype=dtype,
                      cache_dtype="bfloat16" if dtypes == ["bfloat16"] else "float32",
                      mta={"adapter_kind": args.kind, "num_top_layers": args.top_layers,
                           "lora_attention": args.lora_attention})
    train_rows, _, source = load_data(args.data, cfg)
    if args.max_rows:  # every k-th row keeps the task mix
        train_rows = train_rows[:: max(1, len(train_rows) // args.max_rows)][: args.max_rows]
    tasks = TaskRegistry.infer([r.to_dict() for r in train_rows])
    base, tok, info = load_base_model(cfg.base_model)
    gated_base = copy.deepcopy(base) if "cached_token_gate" in args.paths else None
    torch.manual_seed(0)
    model = MTAModel(base, MTAConfig(num_tasks=len(tasks), **cfg.mta))
    models = {name: model for name in args.paths}
    if gated_base is not None:
        torch.manual_seed(0)  # the same adapter values; the gate itself starts at zero
        models["cached_token_gate"] = MTAModel(gated_base, MTAConfig(num_tasks=len(tasks), **cfg.mta,
                                                                     gate="token"))
    eos, pad = special_ids(base.config)
    examples = encode_rows(train_rows, tok, tasks, eos, cfg)
    t0 = time.perf_counter()
    cache = build_prefix_cache(model, [e.ids for e in examples], pad, info.sha256, cfg.cache_dtype,
                               use_disk=False, progress=not args.json, compute_dtype=cfg.compute_dtype)
    cache_s = time.perf_counter() - t0
    stage = cfg.stage_plan()[0]
    stage.steps = args.steps
    batches = batch_schedule(examples, len(tasks), stage, 0, cfg.batch_size, seed=0)
    # with the gate compared, both models train adapters and mixture (one-stage training)
    groups = ["adapters", "mixture"] if gated_base is not None else ["adapters"]
    trainable = [p for m in {id(m): m for m in models.values()}.values() for p in m.set_trainable(groups)]
    # one timing series per (path, dtype); keys carry the dtype only when several are compared
    runs = [(name, d) for name in args.paths for d in dtypes]
    label = {r: r[0] if len(dtypes) == 1 else f"{r[0]}@{r[1]}" for r in runs}
    times: dict[str, list[float]] = {label[r]: [] for r in runs}
    tokens = []
    for b in batches:
        tokens.append(sum(len(examples[i].ids) for i in b))
        for name, d in runs:
            t = time.perf_counter()
            with autocast(d):
                if name == "plain":
                    loss = plain_loss(models[name], examples, b, pad)
                else:
                    loss = batch_loss(models[name], examples, b, pad,
                                      None if name == "full_target_logits" else cache)
            loss.backward()
            for p in trainable:
                p.grad = None
            times[label[name, d]].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    first = label[runs[0]]
    result = {
        "data": source, "rows": len(examples), "base_model": cfg.base_model,
        "adapted_layers": model.adapted_layers, "batch_size": cfg.batch_size,
        "threads": args.threads, "compute_dtype": dtypes, "native_bf16": native_bf16(),
        "cpu_count": os.cpu_count(),
        "cache_build_s": round(cache_s, 1), "cache_mb": round(cache_bytes(cache) / 2**20, 1),
        "trained": groups, "median_step_s": {k: round(v, 3) for k, v in med.items()},
        f"time_vs_{first}": {k: round(v / med[first], 3) for k, v in med.items()},
        "mean_tokens_per_batch": round(statistics.mean(tokens)),
    }
    for d in dtypes:  # the figures docs/benchmarks.md quotes, per dtype when several are timed
        suffix = "" if len(dtypes) == 1 else f"@{d}"
        for ref in ("plain", "full_target_logits"):
            if ref in args.paths and "cached" in args.paths:
                result[f"speedup_cached_vs_{ref}{suffix}"] = round(med[label[ref, d]] / med[label["cached", d]], 2)
    if len(dtypes) > 1:
        for name in args.paths:
            a, b = med[label[name, dtypes[0]]], med[label[name, dtypes[1]]]
            result[f"{name}_{dtypes[1]}_vs_{dtypes[0]}_time"] = round(b / a, 2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
