"""The Mixture-of-Task-Adapters math (torch).

Each adapted block holds K adapters and a mixture table ``logits [num_tasks, K]``. A row of
task ``t`` uses ``w = softmax(logits[t] / temperature)`` (shape ``[K]``), so the mixture
depends only on the task: a batch may mix tasks, and a single-task graph can fold ``w`` in.

With ``gate="token"`` (an experiment, not exportable) the mixture also depends on the token:
``w = softmax((logits[t] + W_g rmsnorm(h) / sqrt(H)) / temperature)`` per position, ``h`` the
hidden state entering the block; ``W_g`` starts at 0, so the model starts as the task mixture.
Weights reach the adapters as ``(B, 1, K)`` (task gate) or ``(B, T, K)`` (token gate, or
training's packed rows, where every token carries its own example's task id).

Three adapter kinds, all starting equal to the base model where the kind allows:

- ``ffn``: the block's MLP is replaced by K copies of it ("upcycled" experts, the paper's
  choice); ``out = sum_k w_k * mlp_k(x)``. Equal copies with weights summing to 1 start as
  the base MLP exactly.
- ``lora``: each target projection gets K low-rank deltas, ``y = W x + s * sum_k w_k B_k A_k x``
  with ``B = 0`` at init. Stacking the K factors makes it one matmul pair per projection.
- ``bottleneck``: beside the MLP, ``out = mlp(x) + sum_k w_k * U_k act(D_k x)`` with ``U = 0``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import MTAConfig


def prior_logits(cfg: MTAConfig) -> torch.Tensor:
    """Initial mixture logits ``[num_tasks, K]``.

    - ``own_shared``: the last ``num_shared`` adapters are shared by every task; the others are
      dealt out to tasks round-robin. Own adapter: +strength, shared: +strength/2, others 0.
      With temperature 0.1 and strength 0.2 that is e^2 : e^1 : 1 (own ~0.56 for 4 tasks, K=5).
    - ``overlap``: the reference code's pattern: task t leans on adapters t and t+1 (mod K),
      so neighbouring tasks share one.
    - ``uniform``: all zeros.
    """
    T, K, s = cfg.num_tasks, int(cfg.num_adapters), cfg.prior_strength
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
    """Per-task mixture weights for one block: ``softmax(logits[task_ids] / temperature)``."""

    def __init__(self, cfg: MTAConfig):
        super().__init__()
        self.temperature = cfg.temperature
        self.logits = nn.Parameter(prior_logits(cfg))  # (T, K)

    def forward(self, task_ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits[task_ids] / self.temperature, dim=-1)  # (B, K)

    def weights_for(self, task_id: int) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(self.logits[task_id] / self.temperature, dim=-1)  # (K,)


def _linear_shape(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 style Conv1D."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    w = getattr(layer, "weight", None)
    if w is not None and w.dim() == 2 and hasattr(layer, "nf"):  # transformers Conv1D: (in, out)
        return w.shape[0], w.shape[1]
    raise TypeError(f"cannot adapt {type(layer).__name__}: expected nn.Linear or Conv1D")


class MixedLoRA(nn.Module):
    """K stacked LoRA factors on one projection, mixed by its block's per-task weights."""

    def __init__(self, base_layer: nn.Module, num_adapters: int, rank: int, alpha: float, init_std: float,
                 block: MTABlock):
        super().__init__()
        self.base_layer = base_layer
        object.__setattr__(self, "_block", block)  # the owner of the mixture; not a submodule
        in_f, out_f = _linear_shape(base_layer)
        self.num_adapters, self.rank, self.scaling = num_adapters, rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(num_adapters * rank, in_f))  # (K*r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_f, num_adapters * rank))  # (out, K*r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if init_std > 0:
            nn.init.normal_(self.lora_B, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in)
        y = self.base_layer(x)
        mix = self._block.weights()  # (B, 1 or T, K)
        B = x.shape[0]
        h = F.linear(x, self.lora_A)  # (B, T, K*r)
        h = (h.view(B, -1, self.num_adapters, self.rank) * mix[..., None]).flatten(2)
        return y + F.linear(h, self.lora_B) * self.scaling

    def delta_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The merged ``(out, in)`` update for a fixed mixture ``w`` (K,)."""
        scale = w.repeat_interleave(self.rank).to(self.lora_A.dtype)  # (K*r,)
        return (self.lora_B * scale[None, :]) @ self.lora_A * self.scaling


class MTABlock(nn.Module):
    """Replaces a block's MLP. Holds the mixture and the K adapters of one kind."""

    def __init__(self, mlp: nn.Module, cfg: MTAConfig, lora_targets: list[str], context: TaskContext,
                 attention: nn.Module | None = None, attention_targets: tuple[str, ...] = ()):
        super().__init__()
        self.kind = cfg.adapter_kind
        self.mixture = TaskMixture(cfg)
        object.__setattr__(self, "_context", context)  # shared, not a submodule
        K = int(cfg.num_adapters)
        # token gate: W_g (K, H), zeros (no random draw: adapters get the same init either way)
        self.gate_weight: nn.Parameter | None = None
        self.gate_input: torch.Tensor | None = None  # set by MTAModel's hook on the block's layer
        self._token_weights: torch.Tensor | None = None  # this layer call's (B, T, K), made once
        if cfg.gate == "token":  # before lora wraps the output projection
            self.gate_weight = nn.Parameter(torch.zeros(K, _hidden_size_of(mlp)))
        if self.kind == "ffn":
            self.experts = nn.ModuleList([copy.deepcopy(mlp) for _ in range(K)])
            if cfg.init_std > 0:
                with torch.no_grad():
                    for e in self.experts:
                        for p in e.parameters():
                            p.add_(torch.randn_like(p) * cfg.init_std)
        elif self.kind == "lora":
            self.mlp = mlp
            self.lora_layers: list[MixedLoRA] = []
            targets = [(mlp, n) for n in lora_targets]
            if attention is not None:  # optional: the block's attention projections too
                targets += [(attention, n) for n in attention_targets]
            for parent, name in targets:
                base = getattr(parent, name, None)
                if base is None:
                    raise ValueError(f"{type(parent).__name__} has no projection {name!r}")
                wrapped = MixedLoRA(base, K, cfg.lora_rank, cfg.lora_alpha, cfg.init_std, self)
                setattr(parent, name, wrapped)
                self.lora_layers.append(wrapped)
        else:  # bottleneck
            self.mlp = mlp
            hidden = _hidden_size_of(mlp)
            r = cfg.bottleneck_dim
            self.K, self.r = K, r
            self.down = nn.Parameter(torch.empty(K * r, hidden))  # (K*r, H)
            self.down_bias = nn.Parameter(torch.zeros(K * r))
            self.up = nn.Parameter(torch.zeros(hidden, K * r))  # (H, K*r)
            nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
            if cfg.init_std > 0:
                nn.init.normal_(self.up, std=cfg.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, H)
        w = self.weights()  # (B, 1 or T, K)
        if self.kind == "ffn":
            out = None
            for k, expert in enumerate(self.experts):
                y = expert(x) * w[..., k, None]
                out = y if out is None else out + y
            return out
        if self.kind == "lora":
            return self.mlp(x)  # its projections are MixedLoRA layers
        h = F.gelu(F.linear(x, self.down, self.down_bias))  # (B, T, K*r)
        B = x.shape[0]
        h = (h.view(B, -1, self.K, self.r) * w[..., None]).flatten(2)
        return self.mlp(x) + F.linear(h, self.up)

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
            task_logits = self.mixture.logits[task_ids]  # (B, K) or (B, T, K)
            logits = (task_logits[:, None, :] if task_ids.dim() == 1 else task_logits) + z
            self._token_weights = torch.softmax(logits / self.mixture.temperature, dim=-1)
        return self._token_weights

    def set_gate_input(self, h: torch.Tensor | None) -> None:
        """The hidden state entering this block's layer (None: released); drops the weights
        made from the previous one."""
        self.gate_input, self._token_weights = h, None

    def mixture_parameters(self) -> list[nn.Parameter]:
        """What stage 2 trains: the task logits, and the token gate if there is one."""
        return [self.mixture.logits] + ([self.gate_weight] if self.gate_weight is not None else [])

    def adapter_parameters(self) -> list[nn.Parameter]:
        if self.kind == "ffn":
            return list(self.experts.parameters())
        if self.kind == "lora":
            return [p for lyr in self.lora_layers for p in (lyr.lora_A, lyr.lora_B)]
        return [self.down, self.down_bias, self.up]


class TaskContext:
    """Carries the batch's ``task_ids`` (int64, [B]) from MTAModel.forward to every block."""

    def __init__(self) -> None:
        self.task_ids: torch.Tensor | None = None


def _hidden_size_of(mlp: nn.Module) -> int:
    for name in ("down_proj", "c_proj", "fc2", "wo"):
        layer = getattr(mlp, name, None)
        if layer is not None:
            return _linear_shape(layer)[1]
    raise ValueError(f"cannot find the output projection of {type(mlp).__name__}")
