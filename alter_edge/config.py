"""Configuration dataclasses (torch-free), validated on construction and saved as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import kinds
from .errors import ConfigError

PRIORS = ("own_shared", "overlap", "uniform")
GATES = ("task", "token")
PLACEMENTS = ("top", "middle")


def _check_keys(cls, d: dict) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(known)}")


class _JsonConfig:
    """A config dataclass saved as JSON: ``to_dict`` and a ``from_dict`` that names unknown keys."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        _check_keys(cls, d)
        return cls(**d)


@dataclass
class MTAConfig(_JsonConfig):
    """How the Mixture-of-Task-Adapters module is built."""

    num_tasks: int
    adapter_kind: str = "lora"  # a name in alter_edge.kinds.REGISTRY (ffn: the paper's upcycled MLP experts)
    num_adapters: int | None = None  # K; None = num_tasks + num_shared
    num_shared: int = 1  # adapters every task leans on (used by the own_shared prior)
    layers: list[int] | None = None  # adapted block indices; None = by `placement`
    # where the adapted blocks sit when `layers` is None: top = the top `num_top_layers`; middle =
    # the one block in the middle (num_layers // 2: block 15 of SmolLM2's 30, the authors' choice
    # of block 11 of T5-large's 24 per stack). An encoder-decoder (T5) places blocks in each stack
    # on its own: the middle of each, the top num_top_layers of each, the `layers` indices in each.
    placement: str = "top"
    # top blocks only: everything below is a cacheable frozen prefix. 12 of SmolLM2's 30: with 4,
    # nli stayed at chance; 8 -> 0.57, 12 -> 0.77 on nli alone (docs/results.md, "adapter depth")
    num_top_layers: int = 12
    temperature: float = 0.1  # mixture = softmax(logits[task] / temperature); paper: 0.1
    prior: str = "own_shared"  # how mixture logits start (see alter_edge.mta.prior_logits)
    prior_strength: float = 0.2  # logit gap between a task's own adapter and a foreign one
    lora_rank: int = 16
    lora_alpha: float = 32.0
    bottleneck_dim: int = 64
    target_modules: list[str] | None = None  # lora targets; None = the model_type table
    # also adapt the block's attention projections (kinds that adapt projections: lora, hydra);
    # None = on for those kinds, off otherwise
    lora_attention: bool | None = None
    # task: the mixture depends on the task only (foldable into per-task graphs);
    # token: a learned per-token gate adds W_g rmsnorm(h) / sqrt(H) to the task's logits, h the
    # hidden state entering the block (W_g starts at 0, so it starts equal to "task"). An
    # experiment: it exports as the multi-task graph only (it cannot be folded into per-task
    # graphs, so the exporter refuses those).
    gate: str = "task"
    init_std: float = 0.0  # >0 gives the zero-initialised factor random values (tests)
    # the mixture's rows: None = one per task; else task id -> row (tasks of one row share their
    # mixture: the authors route by task group, nli / classify / generate)
    task_groups: list[int] | None = None
    # the mixture weights are multiplied by this (Poly-style: K, so that a near-uniform mixture of K
    # adapters adds up to one adapter's strength); "K" = num_adapters
    mixture_scale: float | str = 1.0

    def __post_init__(self) -> None:
        if self.num_tasks < 1:
            raise ConfigError(f"num_tasks must be >= 1, got {self.num_tasks}")
        kind = kinds.info(self.adapter_kind)  # raises for an unknown kind
        if self.num_adapters is None:
            self.num_adapters = self.num_tasks + (self.num_shared if self.num_tasks > 1 else 0)
        if self.num_adapters < 1:
            raise ConfigError(f"num_adapters must be >= 1, got {self.num_adapters}")
        if not 0 <= self.num_shared < max(self.num_adapters, 1) and self.num_adapters > 1:
            raise ConfigError(
                f"num_shared must be in [0, num_adapters) = [0, {self.num_adapters}), got {self.num_shared}"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.prior not in PRIORS:
            raise ConfigError(f"prior {self.prior!r} is not one of {', '.join(PRIORS)}")
        if self.gate not in GATES:
            raise ConfigError(f"gate {self.gate!r} is not one of {', '.join(GATES)}")
        if self.lora_attention is None:
            self.lora_attention = kind.attention
        if self.lora_attention and not kind.attention:
            raise ConfigError(f"lora_attention needs an adapter kind that adapts projections "
                              f"({', '.join(k.name for k in kinds.REGISTRY.values() if k.attention)}), "
                              f"not {self.adapter_kind!r}")
        if self.num_top_layers < 1:
            raise ConfigError(f"num_top_layers must be >= 1, got {self.num_top_layers}")
        if self.lora_rank < 1 or self.bottleneck_dim < 1:
            raise ConfigError("lora_rank and bottleneck_dim must be >= 1")
        if self.layers is not None:
            self.layers = sorted({int(i) for i in self.layers})
            if not self.layers:
                raise ConfigError("layers must name at least one block")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement {self.placement!r} is not one of {', '.join(PLACEMENTS)}")
        if self.task_groups is not None:
            self.task_groups = [int(g) for g in self.task_groups]
            if len(self.task_groups) != self.num_tasks or sorted(set(self.task_groups)) != list(
                    range(max(self.task_groups, default=-1) + 1)):
                raise ConfigError(f"task_groups must give each of the {self.num_tasks} tasks a row 0..G-1, "
                                  f"every row used; got {self.task_groups}")
        if self.mixture_scale == "K":
            self.mixture_scale = float(self.num_adapters)
        if not isinstance(self.mixture_scale, (int, float)) or self.mixture_scale <= 0:
            raise ConfigError(f"mixture_scale must be a number > 0 or 'K', got {self.mixture_scale!r}")
        self.mixture_scale = float(self.mixture_scale)

    @property
    def num_routes(self) -> int:
        """Rows of the mixture table: one per task, or one per task group."""
        return self.num_tasks if self.task_groups is None else max(self.task_groups) + 1

    def resolve_layers(self, num_layers: int) -> list[int]:
        if self.layers is None and self.placement == "middle":
            return [num_layers // 2]
        if self.layers is None:
            n = min(self.num_top_layers, num_layers)
            return list(range(num_layers - n, num_layers))
        bad = [i for i in self.layers if not 0 <= i < num_layers]
        if bad:
            raise ConfigError(f"layers {bad} out of range: the model has blocks 0..{num_layers - 1}")
        return list(self.layers)


@dataclass
class StageConfig:
    """One training stage: what trains, for how long, how fast, on what sampling."""

    name: str
    trains: list[str]  # parameter groups: "adapters", "mixture"
    steps: int
    lr: float
    warmup_steps: int = 10
    sampling_temperature: float = 0.0  # task sampling p ~ n_task^T: 0 = balanced, 1 = natural

    def __post_init__(self) -> None:
        bad = sorted(set(self.trains) - {"adapters", "mixture", "base"})
        if bad or not self.trains:
            raise ConfigError(f"stage {self.name!r}: trains {self.trains} must be from adapters, mixture, base")
        if self.steps < 0 or self.lr <= 0:
            raise ConfigError(f"stage {self.name!r}: steps must be >= 0 and lr > 0")
        if not 0.0 <= self.sampling_temperature <= 1.0:
            raise ConfigError(f"stage {self.name!r}: sampling_temperature must be in [0, 1]")


@dataclass
class TrainConfig(_JsonConfig):
    """A whole run. ``stages`` = 2 is the ALTER recipe; 1 trains adapters and mixture together."""

    base_model: str = "smollm2-135m"
    stages: int = 2
    stage1_steps: int = 600
    stage2_steps: int = 40
    stage1_lr: float = 3e-3
    stage2_lr: float = 5e-3
    # > 0: stage 1 (one stage: the joint stage) runs this many epochs over the train rows,
    # ceil(epochs * rows / batch_size) steps, in place of stage1_steps
    epochs: float = 0.0
    # the mixture's learning rate is this many times the adapters' where both train (Poly /
    # MHR: the router learns ~100x faster than the adapters); 1 = one learning rate
    mixture_lr_scale: float = 1.0
    # the base model's weights train too (full fine-tuning, the authors' code) wherever the
    # adapters train; the checkpoint then saves them (base.safetensors) and the frozen-prefix
    # cache is off (the prefix is not frozen)
    train_base: bool = False
    # task: a mixture row per task; group: one per task group (the registry's score groups: nli /
    # classify / generate), as the authors route (MTAConfig.task_groups, filled from the data's tasks)
    route: str = "task"
    batch_size: int = 16
    # a step's batch runs forward/backward in parts of at most this many padded tokens (rows x
    # the part's padded length), gradients summed: the same update with a lower peak memory
    # (a 16-row batch of 288-token rows is 4,608 tokens); 0 = the whole batch in one pass
    micro_batch_tokens: int = 2048
    # how a step lays its rows out (training/batching.py): packed = rows concatenated into lanes
    # of up to lane_tokens tokens (positions restart per row, block-diagonal attention); padded =
    # one row each, right-padded to the longest. The same loss and gradients.
    layout: str = "packed"
    lane_tokens: int = 256
    # hand free heap pages back to the OS every N optimizer steps (training/memory.py); 0 = never
    trim_every: int = 1
    sampling_temperature: float = 0.0
    # > 0: this fraction of each task's train rows is kept away from stage 1, and stage 2 (the
    # mixture) trains on those rows only; 0: both stages train on every train row
    stage2_holdout: float = 0.0
    # two-stage runs: this fraction of each task's train rows is trained on by neither stage;
    # stage 2's mixture is kept only if the loss on them goes down (else stage 1's is restored)
    stage2_guard: float = 0.05
    max_prompt_tokens: int = 256  # longer prompts are cut in the middle (alter_edge.prompts)
    max_target_tokens: int = 48
    dev_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    use_cache: bool = True  # frozen-prefix activation cache
    # autocast dtype for the cache, the training steps and the dev evaluation (weights and
    # optimizer stay float32). auto = bfloat16 on CPUs with native bf16 (AVX512-BF16, AMX),
    # where matmuls ran 2-5x faster, else float32: on an AVX2-only CPU emulated bf16 ran a
    # forward 6.5x and a cached training step 22x slower than float32 (docs/benchmarks.md).
    # The dtype a run used is in its state.
    compute_dtype: str = "auto"
    cache_dtype: str = "bfloat16"
    save_every: int = 25
    eval_max_rows: int = 0  # 0 = whole dev split; else this many rows spread across tasks
    eval_max_new_tokens: int = 32
    mta: dict = field(default_factory=dict)  # MTAConfig fields except num_tasks

    def __post_init__(self) -> None:
        if self.stages not in (1, 2):
            raise ConfigError(f"stages must be 1 or 2, got {self.stages}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.micro_batch_tokens < 0:
            raise ConfigError(f"micro_batch_tokens must be >= 0 (0 = whole batches), got {self.micro_batch_tokens}")
        if self.layout not in ("packed", "padded"):
            raise ConfigError(f"layout {self.layout!r} must be packed or padded")
        if self.lane_tokens < 8 or self.trim_every < 0:
            raise ConfigError(f"lane_tokens must be >= 8 (got {self.lane_tokens}) and trim_every >= 0 "
                              f"(got {self.trim_every})")
        if self.compute_dtype not in ("auto", "bfloat16", "float32"):
            raise ConfigError(f"compute_dtype {self.compute_dtype!r} must be auto, bfloat16 or float32")
        if self.cache_dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError(f"cache_dtype {self.cache_dtype!r} must be float16, bfloat16 or float32")
        if self.max_prompt_tokens < 8 or self.max_target_tokens < 1:
            raise ConfigError("max_prompt_tokens must be >= 8 and max_target_tokens >= 1")
        if not 0.0 <= self.stage2_guard < 0.5:
            raise ConfigError(f"stage2_guard must be in [0, 0.5), got {self.stage2_guard}")
        if not 0.0 <= self.stage2_holdout < 1.0:
            raise ConfigError(f"stage2_holdout must be in [0, 1), got {self.stage2_holdout}")
        if self.route not in ("task", "group"):
            raise ConfigError(f"route {self.route!r} must be task or group")
        if self.epochs < 0 or self.mixture_lr_scale <= 0:
            raise ConfigError(f"epochs must be >= 0 (got {self.epochs}) and mixture_lr_scale > 0 "
                              f"(got {self.mixture_lr_scale})")
        if self.stage2_holdout > 0 and (self.stages == 1 or self.stage2_steps == 0):
            raise ConfigError("stage2_holdout > 0 keeps rows for stage 2, so it needs stages = 2 and "
                              f"stage2_steps > 0 (got stages = {self.stages}, stage2_steps = {self.stage2_steps})")

    def stage_plan(self, train_rows: int = 0) -> list[StageConfig]:
        """The stages; ``train_rows`` (the train split's size) sets stage 1's steps when ``epochs`` > 0."""
        t = self.sampling_temperature
        base = ["base"] if self.train_base else []
        steps1 = self.stage1_steps
        if self.epochs > 0:
            steps1 = math.ceil(self.epochs * train_rows / self.batch_size)
        if self.stages == 1:
            steps = steps1 if self.epochs > 0 else self.stage1_steps + self.stage2_steps
            return [StageConfig("joint", ["adapters", "mixture", *base], steps, self.stage1_lr, sampling_temperature=t)]
        return [
            StageConfig("stage1", ["adapters", *base], steps1, self.stage1_lr, sampling_temperature=t),
            StageConfig("stage2", ["mixture"], self.stage2_steps, self.stage2_lr,
                        warmup_steps=min(5, self.stage2_steps), sampling_temperature=t),
        ]


def save_json(path: Path, obj: dict) -> None:
    from .io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=True) + "\n")
