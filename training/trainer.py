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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from alter_edge.base_model import base_model_type, load_base_model, special_ids
from alter_edge.config import MTAConfig, StageConfig, TrainConfig
from alter_edge.data import (
    BUILTIN_SOURCE,
    Example,
    check_recorded_data,
    load_jsonl,
    load_task_rows,
    recorded_data_path,
    split_task_rows,
    spread_head,
    stratified_indices,
)
from alter_edge.errors import CheckpointError, DataError
from alter_edge.inject import MTAModel, arch_spec, count_parameters
from alter_edge.io import sha256_file
from alter_edge.prompts import encode_example
from alter_edge.tasks import TaskRegistry

from .batching import Encoded, accumulate_batch, batch_loss
from .cache import build_prefix_cache, cache_bytes
from .checkpoint import OPTIMIZER_FILE, load_checkpoint, read_checkpoint_meta, save_checkpoint
from .distributed import Collective
from .evaluate import evaluate
from .memory import trim_heap
from .precision import DTYPES, autocast, resolve_dtype

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
_SAME_RESULT = ("micro_batch_tokens", "layout", "lane_tokens", "trim_every")


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


def mta_config(cfg: TrainConfig, tasks: TaskRegistry) -> MTAConfig:
    """The run's MTA config for its tasks; ``route="group"``: one mixture row per task group, in
    the order the groups first appear among the tasks."""
    mta = dict(cfg.mta)
    if cfg.route == "group":
        groups = list(dict.fromkeys(t.group for t in tasks))
        mta["task_groups"] = [groups.index(t.group) for t in tasks]
        log.info("routing by task group: %s", {g: tasks.groups()[g] for g in groups})
    return MTAConfig(num_tasks=len(tasks), **mta)


def _check_same_data(out: Path, state: dict, data: Path | None, sha256: str | None) -> None:
    """A resumed run trains on the rows it started with: the same data file (by its sha256,
    wherever it lies now), or the built-in mix again."""
    recorded = state.get("data")
    if recorded is None:  # not written by the trainer (a hand-made checkpoint): nothing to compare
        return
    was_builtin = recorded == BUILTIN_SOURCE
    if data is None or was_builtin:
        if (data is None) != was_builtin:
            now = "the built-in task mix" if data is None else f"`data` {data}"
            before = "the built-in task mix" if was_builtin else f"the data file {recorded}"
            raise CheckpointError(f"`resume`: {out} was trained on {before}, not {now}; resume with the data "
                                  "the run started with, or choose another `out`")
        return
    if sha256 is None:  # not a file: loading it says so
        return
    before = state.get("data_sha256")
    if before is None:  # a run started before the data's hash was recorded: its path must match
        if recorded is not None and Path(recorded).resolve() != Path(data).resolve():
            raise CheckpointError(f"`resume`: {out} was trained on {recorded}, not {data}, and recorded no hash "
                                  "of its data to compare; resume with the same `data` file")
        return
    if sha256 != before:
        raise CheckpointError(f"`resume`: {out} was trained on data with sha256 {before} ({recorded}), but `data` "
                              f"{data} has sha256 {sha256}: resume with the data the run started with, or "
                              "choose another `out`")


def load_data(data: Path | None, cfg: TrainConfig) -> tuple[list[Example], list[Example], str]:
    rows, source = load_task_rows(data)
    train, dev = split_task_rows(rows, source, cfg.dev_fraction, cfg.split_seed)
    if not train:
        raise DataError(f"{source}: no training rows after the dev split")
    return train, dev, source


def stage_pools(train_rows: Sequence[Example], cfg: TrainConfig,
                num_stages: int) -> tuple[list[list[int] | None], list[int]]:
    """The train-row indices each stage draws from (None: every row), and the guard rows.

    Two-stage runs set aside ``stage2_guard`` of each task's rows (stratified) that neither
    stage trains on: stage 2's mixture is kept only if their loss goes down. ``stage2_holdout``
    sets aside a further slice that only stage 2 (the mixture) trains on."""
    if num_stages < 2 or cfg.stage2_steps == 0:
        return [None] * num_stages, []
    rows = list(range(len(train_rows)))
    guard: list[int] = []
    if cfg.stage2_guard > 0:
        kept, guard = stratified_indices(train_rows, cfg.stage2_guard, f"{cfg.split_seed}:guard")
        rows = kept
    if cfg.stage2_holdout <= 0:
        pools: list[list[int] | None] = [rows, rows] if guard else [None, None]
        return pools, guard
    sub = [train_rows[i] for i in rows]
    kept, aside = stratified_indices(sub, cfg.stage2_holdout, f"{cfg.split_seed}:stage2")
    log.info("stage2_holdout %.2f: stage 1 trains on %d rows, stage 2 on %d others",
             cfg.stage2_holdout, len(kept), len(aside))
    return [[rows[i] for i in kept], [rows[i] for i in aside]], guard


@dataclass
class _Run:
    """What every part of a training run shares."""

    out: Path
    cfg: TrainConfig
    dist: Collective
    model: MTAModel
    tokenizer: object
    info: object
    tasks: TaskRegistry
    state: dict
    examples: list[Encoded]
    dev_rows: list[Example]
    pools: list[list[int] | None]
    guard: list[int]
    eos_id: int
    pad_id: int
    dtype: str
    progress: bool
    t_start: float
    cache: list[torch.Tensor] | None = None
    steps_left: int | None = None  # stop_after's optimizer steps still to run in this call

    def elapsed(self) -> float:
        return self.state["seconds"] + time.perf_counter() - self.t_start

    def save(self, state: dict, optimizer: dict | None) -> None:
        if self.dist.is_main:  # one writer; every rank holds the same weights
            save_checkpoint(self.out, self.model, self.tasks, self.cfg, self.info, state, optimizer)


def run_training(data: Path | None, out: Path, cfg: TrainConfig, resume: bool = False,
                 progress: bool = True, stop_after: int | None = None,
                 collective: Collective | None = None) -> dict:
    """Train and write the checkpoint to ``out``. ``stop_after`` ends this call (resumably)
    after that many optimizer steps: what a kill does, on purpose (tests, time-boxed jobs).
    ``collective``: this process's part in a data-parallel run (training/distributed.py);
    default one process."""
    out = Path(out)
    dist = collective or Collective()
    state = _check_out_dir(out, cfg, resume)
    data_sha256 = sha256_file(data) if data is not None and Path(data).is_file() else None
    if state is not None:
        _check_same_data(out, state, data, data_sha256)
        if state.get("complete"):
            log.warning("%s is already complete; nothing to do", out)
            return state
    train_rows, dev_rows, source = load_data(data, cfg)
    if state is not None:
        state["data"] = source  # the same rows (checked above), perhaps under another path now
        if data_sha256 is not None:
            state["data_sha256"] = data_sha256
    run = _open_run(out, cfg, dist, train_rows, dev_rows, source, state, progress and dist.is_main)
    if state is None and data_sha256 is not None:
        run.state["data_sha256"] = data_sha256
    # a trained base keeps its float32 weights (no low-precision copies of them) and has no frozen prefix
    frozen_dtype = torch.float32 if cfg.train_base else DTYPES[run.dtype]
    with run.model.frozen_weights_in(frozen_dtype):
        if cfg.use_cache and cfg.train_base:
            log.warning("the frozen-prefix cache is off: the base model trains (train_base), so the hidden states "
                        "below the adapted blocks change every step")
            run.state["cache"] = {"off": "train_base: the base model trains"}
        elif cfg.use_cache and run.model.seq2seq:
            log.info("the frozen-prefix cache is off: an encoder-decoder (%s) has none yet",
                     run.model.base.config.model_type)
            run.state["cache"] = {"off": "encoder-decoder: no frozen-prefix cache yet"}
        elif cfg.use_cache and run.model.adapted_layers[0] > 0:
            run.cache = _prefix_cache(run)
        run.steps_left = stop_after
        plan = cfg.stage_plan(len(train_rows))
        for si in range(run.state["stage"], len(plan)):
            if not _run_stage(run, si, plan[si]):  # stopped inside the stage (stop_after)
                return run.state
    state = run.state
    state["complete"] = True
    state["seconds"] = round(run.elapsed(), 1)
    state["parameters"] = count_parameters(run.model)
    state["peak_rss_mb"] = round(max(state.get("peak_rss_mb", 0.0), _peak_rss_mb()), 1)
    run.save(state, None)
    if dist.is_main:
        (out / OPTIMIZER_FILE).unlink(missing_ok=True)
    dist.barrier()
    return state


def _open_run(out: Path, cfg: TrainConfig, dist: Collective, train_rows: list[Example], dev_rows: list[Example],
              source: str, state: dict | None, progress: bool) -> _Run:
    """The model (new, or the checkpoint being resumed), its tokenizer and the run's state."""
    tasks = TaskRegistry.infer([r.to_dict() for r in train_rows + dev_rows])
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    if state is not None:
        ck = load_checkpoint(out)
        model, tokenizer, info = ck.model, ck.tokenizer, ck.base_info
        if ck.tasks.to_dict() != tasks.to_dict():
            raise CheckpointError(f"`resume`: the data's tasks differ from those in {out}/tasks.json")
    else:
        with dist.main_first():  # rank 0 converts/caches the base model once
            # a family that cannot train is refused here, before its weights load or any step (T5
            # trains; export refuses it later)
            arch_spec(base_model_type(cfg.base_model))
            base, tokenizer, info = load_base_model(cfg.base_model)
        model = MTAModel(base, mta_config(cfg, tasks))
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
    params = count_parameters(model)
    if model.seq2seq and cfg.layout == "packed":
        log.info("layout packed: an encoder-decoder trains padded (no packed layout for it yet; the same loss)")
    log.info("MTA: %s, blocks %s, K=%s; trainable adapters %d, mixture %d", model.cfg.adapter_kind,
             model.adapted_by_stack if model.seq2seq else model.adapted_layers, model.cfg.num_adapters,
             params["adapters"], params["mixture"])
    pools, guard = stage_pools(train_rows, cfg, len(cfg.stage_plan()))
    return _Run(out, cfg, dist, model, tokenizer, info, tasks, state,
                encode_rows(train_rows, tokenizer, tasks, eos_id, cfg), dev_rows, pools, guard, eos_id, pad_id,
                dtype, progress, t_start)


def _prefix_cache(run: _Run) -> list[torch.Tensor]:
    t0 = time.perf_counter()
    with run.dist.main_first():  # the other ranks read rank 0's copy from disk (same key)
        cache = build_prefix_cache(run.model, [e.ids for e in run.examples], run.pad_id, run.info.sha256,
                                   run.cfg.cache_dtype, progress=run.progress, compute_dtype=run.dtype)
    run.state.setdefault("cache", {"seconds": round(time.perf_counter() - t0, 1), "bytes": cache_bytes(cache)})
    return cache


def _run_stage(run: _Run, si: int, stage: StageConfig) -> bool:
    """Train stage ``si`` from the state's step to its end, evaluate, save; True when done.
    With ``run.steps_left`` set, the call stops (resumably, the checkpoint saved) once that
    many steps have run, unless at a stage's last step: then it returns False."""
    state, cfg, model = run.state, run.cfg, run.model
    if stage.steps == 0:  # an empty stage trains nothing and needs no evaluation
        state["stage"], state["step"] = si + 1, 0
        return True
    trainable = model.set_trainable(stage.trains)
    opt = torch.optim.AdamW(_param_groups(model, trainable, cfg.mixture_lr_scale), lr=stage.lr, weight_decay=0.0)
    if state["step"] > 0 and (run.out / OPTIMIZER_FILE).is_file():
        opt.load_state_dict(torch.load(run.out / OPTIMIZER_FILE, weights_only=True))
    guarded = stage.trains == ["mixture"] and bool(run.guard)
    if guarded and "stage2_guard" not in state:
        state["stage2_guard"] = {"rows": len(run.guard), "loss_before": round(_guard_loss(run), 5)}
    batches = batch_schedule(run.examples, len(run.tasks), stage, si, cfg.batch_size, cfg.seed, run.pools[si])
    bar = tqdm(total=stage.steps, initial=state["step"], desc=stage.name, unit="step", disable=not run.progress)
    t_stage, seen = time.perf_counter(), 0
    for step in range(state["step"], stage.steps):
        t_step = time.perf_counter()
        loss = _train_step(run, opt, trainable, batches[step], lr_at(step, stage))
        state["step_seconds"] = round(state.get("step_seconds", 0.0) + time.perf_counter() - t_step, 2)
        seen += len(batches[step])
        state["step"] = step + 1
        state["history"].append({"stage": stage.name, "step": step + 1, "loss": round(loss, 5)})
        bar.set_postfix(loss=f"{loss:.3f}", ex_s=f"{seen / (time.perf_counter() - t_stage):.1f}")
        bar.update(1)
        last = step + 1 == stage.steps
        if run.steps_left is not None:
            run.steps_left -= 1
            if run.steps_left <= 0 and not last:
                state["seconds"] = run.elapsed()
                run.t_start = time.perf_counter()
                run.save(state, opt.state_dict())
                bar.close()
                run.dist.barrier()  # no rank returns before the checkpoint is written
                return False
        if (step + 1) % cfg.save_every == 0 and not last:
            run.save({**state, "seconds": run.elapsed()}, opt.state_dict())
    bar.close()
    if guarded:
        _keep_or_revert_mixture(run)
    if stage.name not in state["evals"] and run.dev_rows and run.dist.is_main:
        ev = _dev_eval(run.model, run.tokenizer, run.tasks, run.dev_rows, run.eos_id, run.pad_id, cfg, run.dtype,
                       run.progress)
        state["evals"][stage.name] = ev
        log.info("%s dev: %s", stage.name, ev)
    state["stage"], state["step"] = si + 1, 0
    run.save({**state, "seconds": run.elapsed()}, None)
    return True


def _param_groups(model: MTAModel, trainable: list[torch.nn.Parameter], mixture_lr_scale: float) -> list[dict]:
    """The optimizer's parameter groups: one, or (``mixture_lr_scale`` != 1, mixture training
    beside other parameters) the mixture apart at that multiple of the learning rate."""
    mixture = {id(p) for p in model.parameter_groups()["mixture"]}
    mine = [p for p in trainable if id(p) in mixture]
    rest = [p for p in trainable if id(p) not in mixture]
    if mixture_lr_scale == 1.0 or not mine or not rest:
        return [{"params": trainable, "lr_scale": 1.0}]
    return [{"params": rest, "lr_scale": 1.0}, {"params": mine, "lr_scale": float(mixture_lr_scale)}]


def _peak_rss_mb() -> float:
    """This process's peak resident memory (MB; Linux ru_maxrss is in KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_step(run: _Run, opt, trainable: list[torch.nn.Parameter], idx: list[int], lr: float) -> float:
    """One optimizer step on batch ``idx`` (this rank's share of it); returns the batch loss."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    opt.zero_grad(set_to_none=True)
    cfg = run.cfg
    loss = accumulate_batch(run.model, run.examples, run.dist.shard(idx), run.pad_id, run.cache, run.dtype,
                            cfg.micro_batch_tokens, batch_rows=len(idx), layout=cfg.layout,
                            lane_tokens=cfg.lane_tokens)
    loss = run.dist.reduce_grads(trainable, loss)
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    if cfg.trim_every and (len(run.state["history"]) + 1) % cfg.trim_every == 0:  # this step included
        trim_heap()
    return loss


@torch.no_grad()
def _guard_loss(run: _Run) -> float:
    """The mean target loss on the guard rows (train rows that neither stage trains on)."""
    total = 0.0
    for s in range(0, len(run.guard), run.cfg.batch_size):
        part = run.guard[s : s + run.cfg.batch_size]
        with autocast(run.dtype):
            total += batch_loss(run.model, run.examples, part, run.pad_id, run.cache, run.cfg.layout,
                                run.cfg.lane_tokens).item() * len(part)
    return total / len(run.guard)


def _keep_or_revert_mixture(run: _Run) -> None:
    """Stage 2 keeps the mixture it trained only if the guard rows' loss went down; otherwise
    every block's mixture (and token gate) goes back to what stage 1 trained with. The state
    records the losses, the decision and why."""
    g = run.state["stage2_guard"]
    if "kept" in g:
        return
    after = _guard_loss(run)
    g["loss_after"] = round(after, 5)
    g["kept"] = after < g["loss_before"]
    if g["kept"]:
        g["why"] = f"guard loss {g['loss_before']:.4f} -> {after:.4f}: stage 2 improved it"
    else:
        g["why"] = f"guard loss {g['loss_before']:.4f} -> {after:.4f}: not lower, so stage 1's mixture is kept"
        run.model.reset_mixture()
    log.info("stage 2 guard (%d rows): %s", g["rows"], g["why"])


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
        src = recorded_data_path(ck.state.get("data", ""))
        if src is not None:
            check_recorded_data(src, ck.state.get("data_sha256"))
        _, rows, _ = load_data(src, ck.train_config)
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
