"""What every adapter kind shares: the interface of a kind and of its graph piece, and small
helpers (torch and numpy) the kinds use. The graph pieces take the exporter's graph builder
(``export.graph.GraphBuilder``) and mixture (``export.adapters.MixtureSource``) as arguments:
the base package never imports ``export``."""

from __future__ import annotations

import numpy as np
from torch import nn

from alter_edge.errors import ConfigError

MS = "com.microsoft"  # onnxruntime's contrib-operator domain (export.graph.MS)


def to_numpy(t) -> np.ndarray:
    """A torch tensor as a float32 numpy array (detached, on the CPU)."""
    return t.detach().float().cpu().numpy()


def linear_shape(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 style Conv1D."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    w = getattr(layer, "weight", None)
    if w is not None and w.dim() == 2 and hasattr(layer, "nf"):  # transformers Conv1D: (in, out)
        return w.shape[0], w.shape[1]
    raise TypeError(f"cannot adapt {type(layer).__name__}: expected nn.Linear or Conv1D")


def hidden_size_of(mlp: nn.Module) -> int:
    for name in ("down_proj", "c_proj", "fc2", "wo"):
        layer = getattr(mlp, name, None)
        if layer is not None:
            return linear_shape(layer)[1]
    raise ValueError(f"cannot find the output projection of {type(mlp).__name__}")


class AdapterKind:
    """One kind of adapter. ``build`` gives an ``MTABlock`` the kind's modules and parameters
    (``targets``: the (parent module, projection name) pairs a projection-adapting kind wraps);
    ``forward`` is the block's output for mixture weights ``w`` (B, 1 or T, K);
    ``graph_piece`` is what the exporter emits for the block."""

    name = ""

    def build(self, block: nn.Module, mlp: nn.Module, cfg, targets: list[tuple[nn.Module, str]]) -> None:
        raise NotImplementedError

    def forward(self, block: nn.Module, x, w):
        raise NotImplementedError

    def adapter_parameters(self, block: nn.Module) -> list[nn.Parameter]:
        raise NotImplementedError

    def graph_piece(self, block: nn.Module, mix, attn_projections: dict[str, nn.Module],
                    mlp_names: tuple[str, ...]) -> GraphPiece:
        raise NotImplementedError


class GraphPiece:
    """A block's adapters in a built graph. ``mix``: the block's mixture (``export.adapters.
    MixtureSource``); an ``Emit`` (``e``) says what the graph is for: ``multitask`` (each row's
    mixture gathered by ``task_ids``), ``task`` (one task's mixture folded in as a constant) or
    ``merged`` (the adapters merged into the base weights: kinds that can)."""

    name = ""

    def __init__(self, mix):
        self.mix = mix

    def project(self, g, e, key: str, names: tuple[str, ...], w: np.ndarray, outs: tuple[int, ...], x: str,
                resid: str, bias: np.ndarray | None = None, base_key: str | None = None) -> str:
        """A group of projections (``names``, stacked rows ``w`` of widths ``outs``) on ``x``: the
        base's own unless the kind adapts them."""
        return g.linear(x, w, key=base_key, bias=bias)

    def mlp(self, g, e, key: str, x: str, resid: str, emit_mlp) -> str:
        """The block's MLP output; ``emit_mlp(module, key, x, project=None)`` emits a plain MLP
        module (``project``: how its projections are emitted, default ``g.linear``)."""
        raise NotImplementedError

    def refuse_merged(self, e) -> None:
        if e.mode == "merged":
            raise ConfigError(f"a merged single-task graph needs adapters that merge into the base weights (lora, hydra); this checkpoint's are {self.name!r} "
                              "(use the per-task graph, which prunes and folds them)")
