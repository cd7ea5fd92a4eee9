"""Training throughput: the trainer's step beside the padded step and a plain peft LoRA step.

Every path runs a whole optimizer step (forward, backward, clip, AdamW) on the same batches,
drawn by the trainer's own schedule; the paths run in turn on every batch, in an order that
rotates from batch to batch (A B C, B C A, ...), so drift of the shared machine hits all
alike. It prints, per path, the median step, the examples/s over all timed batches and both
as ratios to the first path:

- ``padded``: the trainer's step with rows right-padded to the longest in the batch
  (``layout = "padded"``): frozen-prefix cache, logits only at target positions,
  micro-batches of 2,048 padded tokens, the heap trimmed after every step;
- ``packed``: the trainer's step at the ``TrainConfig`` defaults (rows packed into lanes,
  training/batching.py);
- ``peft``: what a user would otherwise write: peft's LoRA on the same base, the same rank,
  alpha and projections of the same blocks, transformers' full forward with ``labels`` (logits
  at every position), rows padded to the longest;
- ``plain``: the MTA model through transformers' full forward with ``labels``;
- ``packed_token_gate``: the packed step on a copy with the learned per-token gate.

    python benchmarks/train_bench.py --data ../shared/data/alter-mix/train.jsonl --steps 24

``--compute-dtype float32 bfloat16`` times every path in both autocast dtypes (bf16 pays off
only with AVX512-BF16 or AMX; ``auto`` decides so). ``pip install -e '.[bench]'`` brings peft.
"""

from __future__ import annotations

import argparse
import contextlib
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
from alter_edge.testing import cpu_flags
from alter_edge.training.batching import accumulate_batch, right_pad
from alter_edge.training.cache import build_prefix_cache, cache_bytes
from alter_edge.training.memory import trim_heap
from alter_edge.training.precision import autocast, native_bf16, resolve_dtype
from alter_edge.training.trainer import batch_schedule, encode_rows, load_data

PATHS = ("padded", "packed", "peft", "plain", "packed_token_gate")
PADDED_MICRO_BATCH_TOKENS = 2048  # the padded step's micro-batch budget


def labels_loss(model, examples, idx, pad_id: int, task_ids: bool) -> torch.Tensor:
    """A stock causal-LM step: every position's logits, loss via ``labels`` (-100 elsewhere)."""
    ids, mask = right_pad([examples[i].ids for i in idx], pad_id)
    labels = torch.full_like(ids, -100)
    for j, i in enumerate(idx):
        e = examples[i]
        labels[j, len(e.prompt) : len(e.ids)] = torch.tensor(e.target)
    if not task_ids:
        return model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    tids = torch.tensor([examples[i].task_id for i in idx], dtype=torch.long)
    return model(ids, mask, tids, labels=labels, use_cache=False).loss


def peft_model(base, cfg: MTAConfig, layers: list[int]):
    """peft's LoRA with our rank, alpha and target projections, on the same blocks."""
    from peft import LoraConfig, get_peft_model

    from alter_edge.inject import arch_spec

    spec = arch_spec(base.config.model_type)
    targets = list(cfg.target_modules or spec.lora_targets) + (list(spec.attn_targets) if cfg.lora_attention else [])
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets,
                      layers_to_transform=layers, bias="none")
    return get_peft_model(base, lcfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="JSONL task file (default: the built-in mix)")
    ap.add_argument("--base-model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=24, help="batches timed per path")
    ap.add_argument("--skip", type=int, default=2, help="batches run first on every path, not timed (warm-up)")
    ap.add_argument("--max-rows", type=int, default=0, help="use only this many training rows (0 = all)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: TrainConfig's")
    ap.add_argument("--top-layers", type=int, default=None, help="default: MTAConfig's")
    ap.add_argument("--no-attention", action="store_true", help="LoRA on the MLP projections only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compute-dtype", nargs="+", default=["auto"], choices=["auto", "bfloat16", "float32"],
                    help="several: every path is timed in each dtype, in turn (the cache is then float32)")
    ap.add_argument("--paths", nargs="+", default=list(PATHS[:3]), choices=PATHS,
                    help="what to time, in turn on every batch (the first is the ratios' reference)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = list(dict.fromkeys(resolve_dtype(d) for d in args.compute_dtype))
    mta = {} if args.top_layers is None else {"num_top_layers": args.top_layers}
    if args.no_attention:
        mta["lora_attention"] = False
    defaults = TrainConfig()
    cfg = TrainConfig(base_model=args.base_model, batch_size=args.batch_size or defaults.batch_size,
                      compute_dtype=dtypes[0], cache_dtype="bfloat16" if dtypes == ["bfloat16"] else "float32",
                      mta=mta)
    train_rows, _, source = load_data(args.data, cfg)
    if args.max_rows:  # every k-th row keeps the task mix
        train_rows = train_rows[:: max(1, len(train_rows) // args.max_rows)][: args.max_rows]
    tasks = TaskRegistry.infer([r.to_dict() for r in train_rows])
    base, tok, info = load_base_model(cfg.base_model)
    spare = {p: copy.deepcopy(base) for p in ("peft", "packed", "packed_token_gate") if p in args.paths}
    torch.manual_seed(0)
    mcfg = MTAConfig(num_tasks=len(tasks), **cfg.mta)
    model = MTAModel(base, mcfg)
    models = {p: model for p in ("padded", "plain")}
    if "packed" in spare:
        torch.manual_seed(0)  # the same adapter values on a copy whose frozen weights go to bf16
        models["packed"] = MTAModel(spare["packed"], mcfg)
    if "packed_token_gate" in spare:
        torch.manual_seed(0)  # the same adapter values; the gate itself starts at zero
        models["packed_token_gate"] = MTAModel(spare["packed_token_gate"], MTAConfig(
            num_tasks=len(tasks), **cfg.mta, gate="token"))
    if "peft" in spare:
        models["peft"] = peft_model(spare["peft"], mcfg, model.adapted_layers)
    eos, pad = special_ids(base.config)
    examples = encode_rows(train_rows, tok, tasks, eos, cfg)
    t0 = time.perf_counter()
    cache = build_prefix_cache(model, [e.ids for e in examples], pad, info.sha256, cfg.cache_dtype,
                               use_disk=False, progress=not args.json, compute_dtype=cfg.compute_dtype)
    cache_s = time.perf_counter() - t0
    stage = cfg.stage_plan()[0]
    stage.steps = args.steps + args.skip
    batches = batch_schedule(examples, len(tasks), stage, 0, cfg.batch_size, seed=0)
    params, optims = {}, {}
    for p in args.paths:
        m = models[p]
        params[p] = [q for q in m.parameters() if q.requires_grad] if p == "peft" else m.set_trainable(["adapters"])
        optims[p] = torch.optim.AdamW(params[p], lr=1e-4, weight_decay=0.0)

    def step(path: str, idx: list[int], dtype: str) -> None:
        optims[path].zero_grad(set_to_none=True)
        if path in ("padded", "packed", "packed_token_gate"):
            padded = path == "padded"
            accumulate_batch(models[path], examples, idx, pad, cache, dtype,
                             PADDED_MICRO_BATCH_TOKENS if padded else cfg.micro_batch_tokens,
                             layout="padded" if padded else cfg.layout, lane_tokens=cfg.lane_tokens)
        else:
            with autocast(dtype):
                loss = labels_loss(models[path], examples, idx, pad, task_ids=path == "plain")
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params[path], 1.0)
        optims[path].step()
        if path == "padded" or (path not in ("peft", "plain") and cfg.trim_every == 1):
            trim_heap()

    # the trainer holds the adapted blocks' frozen weights in the compute dtype while it trains
    # (MTAModel.frozen_weights_in); the padded path keeps autocast's per-call casts
    with contextlib.ExitStack() as stack:
        for p in ("packed", "packed_token_gate"):
            if p in args.paths and len(dtypes) == 1 and dtypes[0] == "bfloat16":
                stack.enter_context(models[p].frozen_weights_in(torch.bfloat16))
        times, tokens = time_paths(args, dtypes, batches, step, examples)
    report(args, cfg, mcfg, model, source, examples, dtypes, times, tokens, cache_s, cache)


def _runs(paths: list[str], dtypes: list[str]) -> tuple[list[tuple[str, str]], dict[tuple[str, str], str]]:
    """Every (path, dtype) timed, and its label (the dtype only when several are compared)."""
    runs = [(p, d) for p in paths for d in dtypes]
    return runs, {r: r[0] if len(dtypes) == 1 else f"{r[0]}@{r[1]}" for r in runs}


def time_paths(args, dtypes, batches, step, examples) -> tuple[dict[str, list[float]], list[int]]:
    """Every path on every batch, the order rotating from batch to batch; the first
    ``args.skip`` batches warm up and are not timed."""
    runs, label = _runs(args.paths, dtypes)
    times: dict[str, list[float]] = {label[r]: [] for r in runs}
    tokens = []
    for n, b in enumerate(batches):
        order = runs[n % len(runs):] + runs[: n % len(runs)]
        for r in order:
            t = time.perf_counter()
            step(r[0], b, r[1])
            if n >= args.skip:
                times[label[r]].append(time.perf_counter() - t)
        if n >= args.skip:
            tokens.append(sum(len(examples[i].ids) for i in b))
    return times, tokens


def report(args, cfg, mcfg, model, source, examples, dtypes, times, tokens, cache_s, cache) -> None:
    runs, label = _runs(args.paths, dtypes)
    med = {k: statistics.median(v) for k, v in times.items()}
    ex_s = {k: len(v) * cfg.batch_size / sum(v) for k, v in times.items()}
    first = label[runs[0]]
    result = {
        "data": source, "rows": len(examples), "base_model": cfg.base_model,
        "adapted_layers": model.adapted_layers, "lora_attention": mcfg.lora_attention, "rank": mcfg.lora_rank,
        "batch_size": cfg.batch_size, "timed_batches": len(tokens), "threads": args.threads,
        "compute_dtype": dtypes, "native_bf16": native_bf16(), "cpu_count": os.cpu_count(),
        "cpu": cpu_flags(), "cache_build_s": round(cache_s, 1), "cache_mb": round(cache_bytes(cache) / 2**20, 1),
        "mean_tokens_per_batch": round(statistics.mean(tokens)),
        "median_step_s": {k: round(v, 3) for k, v in med.items()},
        "examples_per_s": {k: round(v, 2) for k, v in ex_s.items()},
        f"examples_per_s_vs_{first}": {k: round(v / ex_s[first], 2) for k, v in ex_s.items()},
        f"median_step_speedup_vs_{first}": {k: round(med[first] / v, 2) for k, v in med.items()},
    }
    if "packed" in args.paths and "peft" in args.paths:
        for d in dtypes:
            sfx = "" if len(dtypes) == 1 else f"@{d}"
            result[f"packed_vs_peft_examples_per_s{sfx}"] = round(ex_s[label["packed", d]] / ex_s[label["peft", d]], 2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>34}: {v}")


if __name__ == "__main__":
    main()
