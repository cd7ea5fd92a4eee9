"""Named training configurations (torch-free): ``alter-edge train --preset NAME``. A preset is a
set of ``TrainConfig`` fields and ``MTAConfig`` fields (``TrainConfig.mta``); flags given beside
it win.

- ``reference``: the authors' configuration (alibaba/EasyNLP ``examples/mta``: ``modeling_MTA.py``,
  ``train.sh``) on a decoder LM. ``ffn`` experts, 5 upcycled copies of the MLP of one middle
  block (block 15 of SmolLM2's 30; on T5 the middle block of each stack, as the authors placed it;
  ``--layers`` overrides); no shared expert; one mixture per task
  group (nli / classify / generate, the overall score's groups from the task registry); the
  code's gate start, logits ``(.22, .22, .2, .2, .2)`` shifted per group under ``softmax(g / 0.1)``
  (the ``overlap`` prior at strength 0.02: softmax ignores the common 0.2); one stage training
  everything, base included (full fine-tuning, one Adam), 10 epochs. Learning rate: the authors'
  3e-5 at batch 1, scaled to our batch of 16 by the square root of the batch ratio (Adam's rule;
  the linear rule's 4.8e-4 is high for full fine-tuning): 3e-5 * sqrt(16) = 1.2e-4. The frozen-
  prefix cache is off (the base trains).
- ``poly``: Poly / MHR-style joint training (arXiv 2202.13914, 2211.03831): lora adapters, a
  uniform mixture start, the mixture in its own parameter group at 100x the adapters' learning
  rate, the mixture scaled by K so that a task's adapters add up to one LoRA's strength; one
  stage of the shared-LoRA baseline's 640 steps.
- ``hydra``: one shared A with per-task B heads (HydraLoRA / MTL-LoRA, ``alter_edge.kinds.hydra``):
  K = the task count, each task's mixture leaning on its own head; rank 6, the trainable count
  of one shared LoRA of rank 16 on SmolLM2-135M with 4 tasks (154k vs 163k numbers a block);
  one stage of the baseline's 640 steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError

AUTHORS_LR, AUTHORS_BATCH, OUR_BATCH = 3e-5, 1, 16


@dataclass(frozen=True)
class Preset:
    summary: str
    train: dict = field(default_factory=dict)  # TrainConfig fields
    mta: dict = field(default_factory=dict)  # MTAConfig fields


PRESETS: dict[str, Preset] = {
    "reference": Preset(
        "the authors' configuration: 5 upcycled ffn experts in one middle block, a mixture per task group, "
        "full fine-tuning, one stage, 10 epochs",
        train={"stages": 1, "stage2_steps": 0, "epochs": 10.0, "train_base": True, "route": "group",
               "batch_size": OUR_BATCH, "stage1_lr": round(AUTHORS_LR * (OUR_BATCH / AUTHORS_BATCH) ** 0.5, 10)},
        mta={"adapter_kind": "ffn", "num_adapters": 5, "num_shared": 0, "placement": "middle", "prior": "overlap",
             "prior_strength": 0.02, "temperature": 0.1, "lora_attention": False}),
    "poly": Preset(
        "Poly-style: lora, uniform mixture start, mixture at 100x the adapters' lr, mixture x K; one stage",
        train={"stages": 1, "stage1_steps": 640, "stage2_steps": 0, "mixture_lr_scale": 100.0},
        mta={"adapter_kind": "lora", "prior": "uniform", "mixture_scale": "K"}),
    "hydra": Preset(
        "shared A, per-task B heads (rank 6: one shared rank-16 LoRA's trainable count); one stage",
        train={"stages": 1, "stage1_steps": 640, "stage2_steps": 0},
        mta={"adapter_kind": "hydra", "num_shared": 0, "lora_rank": 6}),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[name]


def train_kwargs(name: str | None, train: dict, mta: dict) -> dict:
    """``TrainConfig`` keyword arguments: the preset's, then ``train`` and ``mta`` (the fields
    given explicitly) over them."""
    p = preset(name) if name else Preset("")
    return {**p.train, **train, "mta": {**p.mta, **mta}}
