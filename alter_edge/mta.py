"""The Mixture-of-Task-Adapters math (torch).

Each adapted block holds K adapters and a mixture table ``logits [num_tasks, K]``. A row of
task ``t`` uses ``w = softmax(logits[t] / temperature)`` (shape ``[K]``), so the mixture
depends only on the task: a batch may mix tasks, and a single-task graph can fold ``w`` in.

With ``gate="token"`` (an experiment) the mixture also depends on the token:
``w = softmax((logits[t] + W_g rmsnorm(h) / sqrt(H)) / temperature)`` per position, ``h`` the
hidden state entering the block; ``W_g`` starts at 0, so the model starts as the task mixture.
It exports as the multi-task graph (the gate is part of it); it cannot be folded into per-task
graphs. Weights reach the adapters as ``(B, 1, K)`` (task gate) or ``(B, T, K)`` (token gate, or
training's packed rows, where every token carries its own example's task id).

What the K adapters are is the block's adapter kind, one module each in ``alter_edge.kinds``
(``ffn``, the paper's upcycled MLP experts; ``lora``; ``bottleneck``; ``hydra``): the kind builds
the block's parameters and computes its output from the mixture weights. Every kind starts
equal to the base model where the kind allows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import kinds
from .config import MTAConfig
from .kinds.base import hidden_size_of


def prior_logits(cfg: MTAConfig) -> torch.Tensor:
    """Initial mixture logits ``[rows, K]``: a row per task, or per task group (``task_groups``;
    the patterns below then deal adapters out to groups).

    - ``own_shared``: the last ``num_shared`` adapters are shared by every task; the others are
      dealt out to tasks round-robin. Own adapter: +strength, shared: +strength/2, others 0.
      With temperature 0.1 and strength 0.2 that is e^2 : e^1 : 1 (own ~0.56 for 4 tasks, K=5).
    - ``overlap``: the reference code's pattern: task t leans on adapters t and t+1 (mod K),
      so neighbouring tasks share one.
    - ``uniform``: all zeros.
    """
    T, K, s = cfg.num_routes, int(cfg.num_adapters), cfg.prior_strength
    logits = torch.zeros(T, K)
    if K == 1 or cfg.prior == "uniform":
        return logits
    if cfg.prior == "overlap":
        for t in range(T):
            logits[t, t % K] += s
            logits[t, (t + 1) % K] += s
        return logits
    n_shared = cfg.num_shared
    n_own = K - n_shared
    for t in range(T):
        if n_own > 0:
            logits[t, t % n_own] = s
        if n_shared:
            logits[t, n_own:] = s / 2
    return logits


class TaskMixture(nn.Module):
    """Per-task mixture weights for one block: ``scale * softmax(logits[row(task_ids)] / temperature)``,
    ``row`` the task's own row or its group's (``MTAConfig.task_groups``)."""

    def __init__(self, cfg: MTAConfig):
        super().__init__()
        self.temperature = cfg.temperature
        self.scale = cfg.mixture_scale
        self.logits = nn.Parameter(prior_logits(cfg))  # (rows, K)
        route = None if cfg.task_groups is None else torch.tensor(cfg.task_groups, dtype=torch.long)
        self.register_buffer("route", route, persistent=False)  # task id -> row; the config holds it

    def task_logits(self, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of ``task_ids`` (any shape, + K), or of every task ``(num_tasks, K)``."""
        if self.route is None:
            return self.logits if task_ids is None else self.logits[task_ids]
        return self.logits[self.route if task_ids is None else self.route[task_ids]]

    def scaled(self, w: torch.Tensor) -> torch.Tensor:
        return w if self.scale == 1.0 else w * self.scale

    def forward(self, task_ids: torch.Tensor) -> torch.Tensor:
        return self.scaled(torch.softmax(self.task_logits(task_ids) / self.temperature, dim=-1))  # (B, K)

    def weights_for(self, task_id: int) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(torch.tensor(task_id))  # (K,)


class MTABlock(nn.Module):
    """Replaces a block's MLP. Holds the mixture and the K adapters of one kind."""

    def __init__(self, mlp: nn.Module, cfg: MTAConfig, lora_targets: list[str], context: TaskContext,
                 attention: nn.Module | list[nn.Module] | None = None, attention_targets: tuple[str, ...] = ()):
        super().__init__()
        self.kind = cfg.adapter_kind
        self.impl = kinds.load(self.kind)  # the kind's module: not a submodule, no state
        self.mixture = TaskMixture(cfg)
        object.__setattr__(self, "_context", context)  # shared, not a submodule
        K = int(cfg.num_adapters)
        # token gate: W_g (K, H), zeros (no random draw: adapters get the same init either way)
        self.gate_weight: nn.Parameter | None = None
        self.gate_input: torch.Tensor | None = None  # set by MTAModel's hook on the block's layer
        self._token_weights: torch.Tensor | None = None  # this layer call's (B, T, K), made once
        if cfg.gate == "token":  # before a kind wraps the output projection
            self.gate_weight = nn.Parameter(torch.zeros(K, hidden_size_of(mlp)))
        targets = [(mlp, n) for n in lora_targets]
        # optional: the block's attention projections too (an encoder-decoder's decoder block
        # has two attentions: self and cross)
        for attn in [] if attention is None else attention if isinstance(attention, list) else [attention]:
            targets += [(attn, n) for n in attention_targets]
        self.impl.build(self, mlp, cfg, targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, H)
        return self.impl.forward(self, x, self.weights())  # weights: (B, 1 or T, K)

    def weights(self) -> torch.Tensor:
        """This batch's mixture, from the task ids MTAModel put in the context: (B, 1, K) for
        the task gate, (B, T, K) for the token gate."""
        task_ids = self._context.task_ids
        if task_ids is None:
            raise RuntimeError("MTA block called without task_ids; call the model through MTAModel")
        if self.gate_weight is None:
            w = self.mixture(task_ids)  # (B, K), or (B, T, K) for per-token task ids
            return w[:, None, :] if task_ids.dim() == 1 else w
        if self._token_weights is None:  # every adapted projection of the layer shares it
            h = self.gate_input
            if h is None:
                raise RuntimeError("token gate without its input: call the model through MTAModel")
            hf = h.float()
            hn = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-6)
            z = F.linear(hn, self.gate_weight.float()) / math.sqrt(hn.shape[-1])  # (B, T, K)
            task_logits = self.mixture.task_logits(task_ids)  # (B, K) or (B, T, K)
            logits = (task_logits[:, None, :] if task_ids.dim() == 1 else task_logits) + z
            self._token_weights = self.mixture.scaled(torch.softmax(logits / self.mixture.temperature, dim=-1))
        return self._token_weights

    def set_gate_input(self, h: torch.Tensor | None) -> None:
        """The hidden state entering this block's layer (None: released); drops the weights
        made from the previous one."""
        self.gate_input, self._token_weights = h, None

    def mixture_parameters(self) -> list[nn.Parameter]:
        """What stage 2 trains: the task logits, and the token gate if there is one."""
        return [self.mixture.logits] + ([self.gate_weight] if self.gate_weight is not None else [])

    def adapter_parameters(self) -> list[nn.Parameter]:
        return self.impl.adapter_parameters(self)


class TaskContext:
    """Carries the batch's ``task_ids`` (int64, [B]) from MTAModel.forward to every block."""

    def __init__(self) -> None:
        self.task_ids: torch.Tensor | None = None
