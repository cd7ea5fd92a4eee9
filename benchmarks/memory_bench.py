"""Resident memory and time of cached training steps under allocator and batching settings,
side by side.

Each setting runs in its own child process (so each peak is its own), in turn
(A B C A B C ... with ``--repeats``), on the same batches of the trainer's schedule:

- ``default``: batches padded to their longest row, no trimming (the session-1 trainer);
- ``pad32``: batches padded to a multiple of 32 tokens (``training.memory.PAD_MULTIPLE``);
- ``pad32_trim``: padded, and ``malloc_trim`` after every step (the trainer before
  micro-batches);
- ``pad32_lazy``: padded, and ``malloc_trim`` only once RSS has crept ``--slack-mb`` above its
  level one step after the last trim (:class:`LazyTrim`);
- ``pad32_heap_lazy``: ``pad32_lazy`` after :func:`keep_heap` (large allocations from the
  heap, its free top kept): steps reuse resident pages instead of faulting new ones in;
- ``micro``: ``pad32_trim`` with each batch run in parts of at most ``--micro-batch-tokens``
  padded tokens, gradients accumulated (``trainer.accumulate_batch``): what ``run_training`` does.

The lazy and heap settings were candidates for a cheaper trim; at the training defaults
(session 10, fp32) neither clearly beat trimming every step, so the trainer does not use them.

A thread samples RSS every 50 ms. Prints RSS after setup (model + cache), RSS after the
last step, the peak during the steps, the median and mean step time, and how many trims ran.

    python benchmarks/memory_bench.py --data ../shared/data/alter-mix/train.jsonl --steps 150

At the training defaults (top 12 blocks, attention LoRA), whole batches against micro-batches:

    python benchmarks/memory_bench.py --data ../shared/data/alter-mix/train.jsonl --steps 40 \
        --top-layers 12 --lora-attention --settings pad32_trim micro --repeats 2
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from alter_edge.training.memory import libc_fn, rss_bytes, trim_heap

SETTINGS = ("default", "pad32", "pad32_trim", "pad32_lazy", "pad32_heap_lazy", "micro")
TRIM_SLACK_MB = 256  # pad32_lazy's default RSS creep before a trim


def rss_mb() -> float:
    return rss_bytes() / 2**20


class LazyTrim:
    """``trim_heap`` only once RSS has crept ``slack_mb`` above its level after the first step
    that followed the last trim.

    Trimming after every step bounds RSS tightly but costs time: the trim walks the heap and
    the pages it hands back are faulted in again by the next step. A step keeps its freed
    activations resident, so the level right after a trim is not the one to compare with;
    the level one step later is, and from there RSS creeps (new batch lengths leave chunks
    glibc cannot reuse) until the next trim. ``slack_mb`` = 0 trims on every call, as
    ``trim_heap`` does; where RSS cannot be read it trims on every call too."""

    def __init__(self, slack_mb: float = 0.0):
        self.slack = int(slack_mb * 2**20)
        self.level: int | None = None
        self.trims = 0

    def __call__(self) -> bool:
        rss = rss_bytes()
        if self.slack and rss:
            if self.level is None:  # the first call after a trim sets the level
                self.level = rss
                return False
            if rss < self.level + self.slack:
                return False
        trimmed = trim_heap()
        self.trims += trimmed
        self.level = None
        return trimmed


# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_heap() -> bool:
    """Serve allocations up to 512 MB from the heap and never trim its free top, so a step
    reuses the pages the step before it freed instead of faulting fresh ones in. By default
    glibc maps each allocation above a dynamic threshold (at most 32 MB) with its own ``mmap``
    and unmaps it on free. Process-wide; False where this is not glibc."""
    fn = libc_fn("mallopt")
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return bool(fn(_M_MMAP_THRESHOLD, 512 * 2**20) & fn(_M_TRIM_THRESHOLD, 2**31 - 1))


def child(setting: str, args) -> dict:
    import torch

    import alter_edge.training.batching as batching_mod
    import alter_edge.training.trainer as trainer_mod
    from alter_edge.base_model import load_base_model, special_ids
    from alter_edge.config import MTAConfig, TrainConfig
    from alter_edge.inject import MTAModel
    from alter_edge.tasks import TaskRegistry
    from alter_edge.training.cache import build_prefix_cache
    from alter_edge.training.memory import PAD_MULTIPLE
    from alter_edge.training.precision import resolve_dtype

    torch.set_num_threads(args.threads)
    if setting == "pad32_heap_lazy":
        keep_heap()
    cfg = TrainConfig(base_model=args.base_model)
    train, dev, _ = trainer_mod.load_data(Path(args.data) if args.data else None, cfg)
    tasks = TaskRegistry.infer([r.to_dict() for r in train + dev])
    base, tok, info = load_base_model(cfg.base_model)
    mta = {} if args.top_layers is None else {"num_top_layers": args.top_layers}
    if args.lora_attention:
        mta["lora_attention"] = True
    model = MTAModel(base, MTAConfig(num_tasks=len(tasks), **mta))
    eos, pad = special_ids(model.base.config)
    ex = trainer_mod.encode_rows(train, tok, tasks, eos, cfg)
    dtype = resolve_dtype(cfg.compute_dtype)
    cache = build_prefix_cache(model, [e.ids for e in ex], pad, info.sha256, cfg.cache_dtype,
                               progress=False, compute_dtype=dtype)
    stage = cfg.stage_plan()[0]
    params = model.set_trainable(stage.trains)
    opt = torch.optim.AdamW(params, lr=stage.lr)
    batches = trainer_mod.batch_schedule(ex, len(tasks), stage, 0, cfg.batch_size, cfg.seed)
    batching_mod.PAD_MULTIPLE = 1 if setting == "default" else PAD_MULTIPLE
    setup = rss_mb()
    peak = [setup]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    times = []
    trim = LazyTrim(args.slack_mb if setting.endswith("_lazy") else 0.0)
    for s in range(min(args.steps, len(batches))):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        batching_mod.accumulate_batch(model, ex, batches[s], pad, cache, dtype,
                                      args.micro_batch_tokens if setting == "micro" else 0, layout=args.layout)
        opt.step()
        if setting not in ("default", "pad32"):
            trim()
        times.append(time.perf_counter() - t0)
    stop.set()
    return {"setting": setting, "setup_mb": round(setup), "end_mb": round(rss_mb()),
            "peak_mb": round(max(peak[0], rss_mb())), "step_s": round(statistics.median(times), 4),
            "mean_step_s": round(statistics.mean(times), 4), "trims": trim.trims}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="JSONL task file (default: the built-in mix)")
    ap.add_argument("--base-model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of A B C")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    ap.add_argument("--top-layers", type=int, default=None, help="adapt the top N blocks (default: MTAConfig's)")
    ap.add_argument("--lora-attention", action="store_true", help="lora on the attention projections too")
    ap.add_argument("--slack-mb", type=float, default=None,
                    help="pad32_lazy: RSS growth that triggers a trim (default: the trainer's)")
    ap.add_argument("--micro-batch-tokens", type=int, default=None,
                    help="micro: padded tokens per forward/backward (default: the trainer's)")
    ap.add_argument("--layout", default="packed", choices=["packed", "padded"],
                    help="how a step lays rows out (training/batching.py; default: the trainer's)")
    ap.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.slack_mb is None:
        args.slack_mb = TRIM_SLACK_MB
    if args.micro_batch_tokens is None:
        from alter_edge.config import TrainConfig

        args.micro_batch_tokens = TrainConfig().micro_batch_tokens
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    results: dict[str, list[dict]] = {s: [] for s in args.settings}
    for r in range(args.repeats):
        for s in args.settings:
            cmd = [sys.executable, __file__, "--child", s, "--steps", str(args.steps),
                   "--threads", str(args.threads), "--base-model", args.base_model,
                   "--slack-mb", str(args.slack_mb), "--micro-batch-tokens", str(args.micro_batch_tokens),
                   "--layout", args.layout]
            if args.top_layers is not None:
                cmd += ["--top-layers", str(args.top_layers)]
            if args.lora_attention:
                cmd.append("--lora-attention")
            if args.data:
                cmd += ["--data", args.data]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env={**os.environ, "TQDM_DISABLE": "1"})
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[s].append(res)
            print(f"round {r + 1} {s:<11} setup {res['setup_mb']:>5} MB  end {res['end_mb']:>5} MB  "
                  f"peak {res['peak_mb']:>5} MB  step {res['step_s']:.3f} s (mean {res['mean_step_s']:.3f})  "
                  f"trims {res['trims']}", flush=True)
    first = args.settings[0]
    print(f"\n{'setting':<12}{'setup MB':>10}{'end MB':>10}{'peak MB':>10}{'step s':>9}{'mean s':>9}"
          f"{'trims':>7}{'mean vs ' + first:>22}")
    keys = ("setup_mb", "end_mb", "peak_mb", "step_s", "mean_step_s", "trims")
    base_mean = statistics.median(x["mean_step_s"] for x in results[first])
    for s, rs in results.items():
        med = {k: statistics.median(x[k] for x in rs) for k in keys}
        print(f"{s:<12}{med['setup_mb']:>10.0f}{med['end_mb']:>10.0f}{med['peak_mb']:>10.0f}"
              f"{med['step_s']:>9.3f}{med['mean_step_s']:>9.3f}{med['trims']:>7.0f}"
              f"{med['mean_step_s'] / base_mean:>21.2f}x")


if __name__ == "__main__":
    main()
