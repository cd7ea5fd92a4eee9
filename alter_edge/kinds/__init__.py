"""The registry of adapter kinds (torch-free).

Each kind is one module of this package that owns all of it: the torch forward (what it adds
to an ``alter_edge.mta.MTABlock``), its per-task fold, and the piece of graph it emits for the
exporter (``export.adapters``). A new kind is one module and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from alter_edge.errors import ConfigError


@dataclass(frozen=True)
class KindInfo:
    """What the torch-free parts (configs, the CLI) know of a kind without importing it."""

    name: str
    module: str  # defines ``KIND``, an ``alter_edge.kinds.base.AdapterKind``
    attention: bool  # adapts the block's attention projections too (on by default)
    summary: str


REGISTRY: dict[str, KindInfo] = {k.name: k for k in (
    KindInfo("ffn", "alter_edge.kinds.ffn", False, "K upcycled copies of the block's MLP (the paper's experts)"),
    KindInfo("lora", "alter_edge.kinds.lora", True, "K stacked low-rank deltas on the block's projections"),
    KindInfo("bottleneck", "alter_edge.kinds.bottleneck", False, "K small down/up adapters beside the MLP"),
    KindInfo("hydra", "alter_edge.kinds.hydra", True,
             "one low-rank A shared by K B heads on each projection (HydraLoRA / MTL-LoRA)"),
)}
NAMES = tuple(REGISTRY)


def info(name: str) -> KindInfo:
    if name not in REGISTRY:
        raise ConfigError(f"adapter_kind {name!r} is not one of {', '.join(NAMES)}")
    return REGISTRY[name]


def load(name: str):
    """The kind's implementation (imports torch)."""
    return importlib.import_module(info(name).module).KIND


__all__ = ["NAMES", "REGISTRY", "KindInfo", "info", "load"]
