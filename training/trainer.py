"""The training loop: one loop for every stage; a stage differs only in what trains, its
steps, learning rate and task sampling (``TrainConfig.stage_plan``).

Stage 1 (ALTER): adapters train with the mixture held at its prior. Stage 2: adapters
frozen, only the mixture trains (cheap). ``stages=1`` trains both together.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from alter_edge.base_model import load_base_model, special_ids
from alter_edge.config import MTAConfig, StageConfig, TrainConfig
from alter_edge.data import (
    Example,
    load_jsonl,
    load_task_rows,
    recorded_data_path,
    split_task_rows,
    spread_head,
    stratified_indices,
)
from alter_edge.errors import CheckpointError, DataError
from alter_edge.inject import MTAModel, count_parameters
from alter_edge.prompts import encode_example
from alter_edge.tasks import TaskRegistry

from .batching import Encoded, accumulate_batch
from .cache import build_prefix_cache, cache_bytes
from .checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from .distributed import Collective
from .evaluate import evaluate
from .memory import trim_heap
from .precision import autocast, resolve_dtype

log = logging.getLogger(__name__)


def encode_rows(rows: Sequence[Example], tokenizer, tasks: TaskRegistry, eos_id: int,
                cfg: TrainConfig) -> list[Encoded]:
    out = []
    for r in rows:
        spec = tasks.get(r.task)
        p, t = encode_example(tokenizer, spec, r.input, r.target, eos_id, cfg.max_prompt_tokens)
        out.append(Encoded(spec.id, p, t[: cfg.max_target_tokens + 1]))
    return out


def task_probs(counts: Sequence[int], temperature: float) -> np.ndarray:
    """p_t ~ n_t^temperature: 0 = balanced across tasks, 1 = proportional to data."""
    w = np.array([c**temperature if c > 0 else 0.0 for c in counts], dtype=np.float64)
    return w / w.sum()


def batch_schedule(examples: Sequence[Encoded], num_tasks: int, stage: StageConfig, stage_idx: int,
                   batch_size: int, seed: int, pool: Sequence[int] | None = None) -> list[list[int]]:
    """Every batch of a stage, fixed by (seed, stage): tasks drawn with ``task_probs``, each
    task's examples visited in reshuffled epochs, then groups of 8 batches sorted by length so
    a batch holds similar lengths (less padding). Resuming at step s replays the same batches.
    ``pool``: the example indices this stage may draw from (default: all)."""
    rng = np.random.default_rng([seed, stage_idx, 7919])
    pool = range(len(examples)) if pool is None else pool
    by_task = [[i for i in pool if examples[i].task_id == t] for t in range(num_tasks)]
    probs = task_probs([len(b) for b in by_task], stage.sampling_temperature)
    n = stage.steps * batch_size
    draws = rng.choice(num_tasks, size=n, p=probs)
    cursors = [0] * num_tasks
    orders = [rng.permutation(len(b)) if b else np.array([], dtype=int) for b in by_task]
    picked = []
    for t in draws:
        if cursors[t] == len(orders[t]):
            orders[t], cursors[t] = rng.permutation(len(by_task[t])), 0
        picked.append(by_task[t][orders[t][cursors[t]]])
        cursors[t] += 1
    batches: list[list[int]] = []
    group = 8 * batch_size
    for s in range(0, n, group):
        chunk = sorted(picked[s : s + group], key=lambda i: len(examples[i].ids))
        sub = [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        rng.shuffle(sub)
        batches.extend(sub)
    return batches


def lr_at(step: int, stage: StageConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    span = max(1, stage.steps - stage.warmup_steps)
    progress = min(1.0, (step - stage.warmup_steps) / span)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# settings that do not change what a run computes: a run may resume with other values
_SAME_RESULT = ("micro_batch_tokens",)


def _check_out_dir(out: Path, cfg: TrainConfig, resume: bool) -> dict | None:
    """Returns the saved state when resuming; raises when ``out`` holds something else."""
    if not out.exists():
        if resume:
            raise CheckpointError(f"`resume`: {out} does not exist; nothing to resume (drop `resume`)")
        return None
    if not out.is_dir():
        raise CheckpointError(f"`out` {out} exists and is not a directory")
    if not (out / "state.json").is_file():
        if any(out.iterdir()):
            raise CheckpointError(f"`out` {out} exists and is not an alter-edge run; choose an empty or new directory")
        return None
    meta = read_checkpoint_meta(out)
    if not resume:
        raise CheckpointError(
            f"`out` {out} already holds a run; pass `resume` to continue it or choose another `out`"
        )
    saved = meta["train_config"]
    mine = cfg.to_dict()
    diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k) and k not in _SAME_RESULT)
    if diff:
        # name the values, so an old run's setting can be passed back (e.g. a run started
        # before compute_dtype defaulted to auto resumes with `--dtype bfloat16`)
        shown = "; ".join(f"{k}: started with {saved.get(k)!r}, now {mine.get(k)!r}" for k in diff)
        raise CheckpointError(
            f"`resume`: {out} was started with different settings ({shown}); "
            "resume with the same options or choose another `out`"
        )
    return meta["state"]


def load_data(data: Path | None, cfg: TrainConfig) -> tuple[list[Example], list[Example], str]:
    rows, source = load_task_rows(data)
    train, dev = split_task_rows(rows, source, cfg.dev_fraction, cfg.split_seed)
    if not train:
        raise DataError(f"{source}: no training rows after the dev split")
    return train, dev, source


def stage_pools(train_rows: Sequence[Example], cfg: TrainConfig, num_stages: int) -> list[list[int] | None]:
    """The train-row indices each stage draws from: None (every row) unless ``stage2_holdout``
    sets aside a stratified slice of each task's rows that only stage 2 (the mixture) sees."""
    if cfg.stage2_holdout <= 0 or num_stages < 2:
        return [None] * num_stages
    kept, aside = stratified_indices(train_rows, cfg.stage2_holdout, f"{cfg.split_seed}:stage2")
    log.info("stage2_holdout %.2f: stage 1 trains on %d rows, stage 2 on %d others",
             cfg.stage2_holdout, len(kept), len(aside))
    return [kept, aside]


def run_training(data: Path | None, out: Path, cfg: TrainConfig, resume: bool = False,
                 progress: bool = True, stop_after: int | None = None,
                 collective: Collective | None = None) -> dict:
    """Train and write the checkpoint to ``out``. ``stop_after`` ends this call (resumably)
    after that many optimizer steps: what a kill does, on purpose (tests, time-boxed jobs).
    ``collective``: this process's part in a data-parallel run (training/distributed.py);
    default one process."""
    out = Path(out)
    dist = collective or Collective()
    progress = progress and dist.is_main
    train_rows, dev_rows, source = load_data(data, cfg)
    state = _check_out_dir(out, cfg, resume)
    if state is not None and state.get("complete"):
        log.warning("%s is already complete; nothing to do", out)
        return state
    all_rows = train_rows + dev_rows
    tasks = TaskRegistry.infer([r.to_dict() for r in all_rows])
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    if state is not None:
        ck = load_checkpoint(out)
        model, tokenizer, info = ck.model, ck.tokenizer, ck.base_info
        if ck.tasks.to_dict() != tasks.to_dict():
            raise CheckpointError(f"`resume`: the data's tasks differ from those in {out}/tasks.json")
    else:
        with dist.main_first():  # rank 0 converts/caches the base model once
            base, tokenizer, info = load_base_model(cfg.base_model)
        model = MTAModel(base, MTAConfig(num_tasks=len(tasks), **cfg.mta))
        state = {"complete": False, "stage": 0, "step": 0, "evals": {}, "history": [], "data": source,
                 "seconds": 0.0}
    # every rank starts from rank 0's adapters and mixture
    dist.sync_params([p for ps in model.parameter_groups().values() for p in ps])
    eos_id, pad_id = special_ids(model.base.config)
    dtype = resolve_dtype(cfg.compute_dtype)  # the same for the cache, the steps and the evaluations
    if state.get("compute_dtype", dtype) != dtype:
        log.warning("resuming in %s a run that trained in %s until now (compute_dtype %s on another CPU)",
                    dtype, state["compute_dtype"], cfg.compute_dtype)
    state["compute_dtype"] = dtype
    log.info("compute dtype: %s (compute_dtype %s)", dtype, cfg.compute_dtype)
    examples = encode_rows(train_rows, tokenizer, tasks, eos_id, cfg)
    params = count_parameters(model)
    log.info("MTA: %s, blocks %s, K=%s; trainable adapters %d, mixture %d",
             model.cfg.adapter_kind, model.adapted_layers, model.cfg.num_adapters,
             params["adapters"], params["mixture"])
    cache = None
    if cfg.use_cache and model.adapted_layers[0] > 0:
        t0 = time.perf_counter()
        with dist.main_first():  # the other ranks read rank 0's copy from disk (same key)
            cache = build_prefix_cache(model, [e.ids for e in examples], pad_id, info.sha256,
                                       cfg.cache_dtype, progress=progress, compute_dtype=dtype)
        state.setdefault("cache", {"seconds": round(time.perf_counter() - t0, 1),
                                   "bytes": cache_bytes(cache)})
    plan = cfg.stage_plan()
    pools = stage_pools(train_rows, cfg, len(plan))
    steps_this_call = 0

    def save(st: dict, optimizer: dict | None) -> None:
        if dist.is_main:  # one writer; every rank holds the same weights
            save_checkpoint(out, model, tasks, cfg, info, st, optimizer)

    optimizer_state = None
    if (out / "optimizer.pt").is_file():
        optimizer_state = torch.load(out / "optimizer.pt", weights_only=True)
    for si in range(state["stage"], len(plan)):
        stage = plan[si]
        if stage.steps == 0:  # an empty stage trains nothing and needs no evaluation
            state["stage"], state["step"] = si + 1, 0
            continue
        trainable = model.set_trainable(stage.trains)
        opt = torch.optim.AdamW(trainable, lr=stage.lr, weight_decay=0.0)
        if optimizer_state is not None and state["step"] > 0:
            opt.load_state_dict(optimizer_state)
        optimizer_state = None
        batches = batch_schedule(examples, len(tasks), stage, si, cfg.batch_size, cfg.seed, pools[si])
        bar = tqdm(total=stage.steps, initial=state["step"], desc=stage.name, unit="step",
                   disable=not progress)
        t_stage = time.perf_counter()
        seen = 0
        for step in range(state["step"], stage.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, stage)
            opt.zero_grad(set_to_none=True)
            loss = accumulate_batch(model, examples, dist.shard(batches[step]), pad_id, cache, dtype,
                                    cfg.micro_batch_tokens, batch_rows=len(batches[step]))
            loss = dist.reduce_grads(trainable, loss)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            trim_heap()
            seen += len(batches[step])
            state["step"] = step + 1
            state["history"].append({"stage": stage.name, "step": step + 1, "loss": round(loss, 5)})
            bar.set_postfix(loss=f"{loss:.3f}", ex_s=f"{seen / (time.perf_counter() - t_stage):.1f}")
            bar.update(1)
            steps_this_call += 1
            last = step + 1 == stage.steps
            if stop_after is not None and steps_this_call >= stop_after and not last:
                state["seconds"] += time.perf_counter() - t_start
                save(state, opt.state_dict())
                bar.close()
                dist.barrier()  # no rank returns before the checkpoint is written
                return state
            if (step + 1) % cfg.save_every == 0 and not last:
                save({**state, "seconds": state["seconds"] + time.perf_counter() - t_start}, opt.state_dict())
        bar.close()
        if stage.name not in state["evals"] and dev_rows and dist.is_main:
            ev = _dev_eval(model, tokenizer, tasks, dev_rows, eos_id, pad_id, cfg, dtype, progress)
            state["evals"][stage.name] = ev
            log.info("%s dev: %s", stage.name, ev)
        state["stage"], state["step"] = si + 1, 0
        save({**state, "seconds": state["seconds"] + time.perf_counter() - t_start}, None)
    state["complete"] = True
    state["seconds"] = round(state["seconds"] + time.perf_counter() - t_start, 1)
    state["parameters"] = params
    save(state, None)
    if dist.is_main:
        (out / "optimizer.pt").unlink(missing_ok=True)
    dist.barrier()
    return state


def _dev_eval(model, tokenizer, tasks, dev_rows, eos_id, pad_id, cfg: TrainConfig, dtype: str,
              progress: bool) -> dict:
    rows = spread_head(dev_rows, cfg.eval_max_rows)
    with autocast(dtype):
        res = evaluate(model, tokenizer, tasks, rows, eos_id, pad_id, cfg.max_prompt_tokens,
                   cfg.eval_max_new_tokens, progress=progress)
    d = res.to_dict()
    d["per_task"] = {k: round(v, 4) for k, v in d["per_task"].items()}
    d["overall"] = round(d["overall"], 4)
    return d


def evaluate_checkpoint(checkpoint: Path, data: Path | None = None, max_rows: int = 0,
                        label_scoring: bool = False, base_model: str | None = None,
                        progress: bool = True, compute_dtype: str = "float32",
                        with_predictions: bool = False) -> dict:
    """Score a checkpoint on ``data`` (default: the dev split of the data it was trained on);
    ``with_predictions`` adds ``predictions``, the greedy output per scored row."""
    ck = load_checkpoint(Path(checkpoint), base_model=base_model)
    if data is None:
        src = ck.state.get("data", "")
        _, rows, _ = load_data(recorded_data_path(src), ck.train_config)
    else:
        rows = load_jsonl(data)
    ck.tasks.check_names([r.task for r in rows])
    rows = spread_head(rows, max_rows)
    dtype = resolve_dtype(compute_dtype)
    with autocast(dtype):
        res = evaluate(ck.model, ck.tokenizer, ck.tasks, rows, ck.eos_id, ck.pad_id,
                       ck.train_config.max_prompt_tokens, ck.train_config.eval_max_new_tokens,
                       with_label_scoring=label_scoring, progress=progress)
    d = res.to_dict()
    d["kinds"] = {t.name: t.kind for t in ck.tasks}
    d["dtype"] = dtype
    if with_predictions:
        d["predictions"] = res.predictions
    return d
