"""What an export is asked for (:class:`ExportOptions`, checked when made) and where each graph
file goes in the bundle (flat: one folder of plain file names)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from alter_edge.errors import BundleError, ConfigError

from .quant import METHODS


@dataclass
class ExportOptions:
    tasks: str | None = "all"  # per-task graphs: "all", "a,b", or None (the multi-task graph only)
    fp32: bool = False  # ship fp32 graphs (the default when no quantized precision is asked for)
    int8: bool = False
    int4: bool = False
    merged: bool = False  # per-task graphs with the adapters merged into the weights (own weights each)
    block_size: int = 32  # weights per scale of the MatMulNBits graphs
    accuracy_level: int = 4  # MatMulNBits: 4 = int8 activations (fast kernels), 0 = fp32 compute
    # bits of the adapter factors in quantized graphs: None = the graph's own (int4 graphs: 4-bit
    # lora B joins the base projection's matmul), or 8 (int4 graphs then add an 8-bit delta)
    adapter_bits: int | None = None
    # "native": int8 matmuls as MatMulNBits (block-wise; onnxruntime's x86/ARM kernels);
    # "web": int8 matmuls as DynamicQuantizeLinear + MatMulInteger (per output channel), the
    # layout onnxruntime-web's WASM build runs fast (docs/javascript.md); int8 graphs only
    target: str = "native"
    # int4 quantizer (export.quant): rtn = round to nearest; gptq = error compensation from the
    # calibration rows' activations
    int4_method: str = "gptq"
    int4_zero_points: bool = True  # asymmetric 4-bit blocks (a zero point per block)
    # precision groups kept at 8 bits in int4 graphs (export.quant.expand_groups), or "auto": the
    # candidate groups whose 4 bits cost the most task loss on the calibration rows, within int4_8bit_mb
    int4_8bit: str | None = None
    int4_8bit_block_size: int = 64  # block size of the 8-bit matrices of an int4 graph (where they divide)
    # "auto": the most weights kept at 8 bits, a fraction of the base's quantized weights, and
    # (when given) the most MB they may add to the int4 weights
    int4_8bit_fraction: float = 0.1
    int4_8bit_mb: float | None = None
    sensitivity_rows: int = 8  # "auto": calibration rows per task the sensitivity is measured on
    int4_accuracy_level: int | None = None  # MatMulNBits accuracy_level of 4-bit matmuls (None: accuracy_level)
    calibration_rows: int = 16  # train rows per task for the int4 calibration
    atol: float = 3e-4  # fp32 parity: max |logits diff| at valid positions (SmolLM2: ~1e-4)
    steps: int = 16  # greedy steps that must match PyTorch, with the KV cache
    int8_budget: float = 1.0  # max mean metric drop per task, points (0-100 scale)
    int4_budget: float = 5.0
    min_top1_int8: float = 0.85  # top-1 agreement with fp32 at every valid prompt position
    min_top1_int4: float = 0.70
    prune_threshold: float = 1e-5  # ffn/bottleneck adapters below this mixture weight are pruned
    data: Path | None = None  # the checkpoint's training data: its dev split is the held-out set
    heldout_rows: int | None = None  # per task, for the quantized-metric check (None: the whole dev split)
    base_model: str | None = None  # override the checkpoint's recorded base model
    threads: int | None = None  # onnxruntime threads for the checks
    overwrite: bool = False
    progress: bool = True

    def levels(self, precision: str) -> int | dict[int, int]:
        """MatMulNBits ``accuracy_level`` at ``precision``: one level, or per bit width for int4 when
        ``int4_accuracy_level`` is set."""
        if precision == "int4" and self.int4_accuracy_level is not None:
            return {4: self.int4_accuracy_level, 8: self.accuracy_level}
        return self.accuracy_level

    def __post_init__(self) -> None:
        if not self.atol > 0:
            raise ConfigError(f"atol must be > 0, got {self.atol}")
        if self.steps < 1:
            raise ConfigError(f"greedy steps must be >= 1, got {self.steps}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block size must be a power of two >= 16, got {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"accuracy level must be 0-4, got {self.accuracy_level}")
        if self.int4_method not in METHODS:
            raise ConfigError(f"int4 method must be one of {', '.join(METHODS)}, got {self.int4_method!r}")
        if not 0 <= self.int4_8bit_fraction <= 1:
            raise ConfigError(f"int4 8-bit fraction must be in [0, 1], got {self.int4_8bit_fraction}")
        if self.int4_8bit_block_size < 16 or self.int4_8bit_block_size & (self.int4_8bit_block_size - 1):
            raise ConfigError(f"int4 8-bit block size must be a power of two >= 16, got {self.int4_8bit_block_size}")
        if self.int4_accuracy_level not in (None, 0, 1, 2, 3, 4):
            raise ConfigError(f"int4 accuracy level must be 0-4, got {self.int4_accuracy_level}")
        if self.calibration_rows < 1:
            raise ConfigError(f"calibration rows must be >= 1, got {self.calibration_rows}")
        if self.adapter_bits not in (None, 4, 8):
            raise ConfigError(f"adapter bits must be 4, 8 or None (the graph's own), got {self.adapter_bits!r}")
        if self.target not in ("native", "web"):
            raise ConfigError(f"target must be 'native' or 'web', got {self.target!r}")
        if self.target == "web" and self.int4:
            raise ConfigError("target 'web' is for int8 graphs: onnxruntime-web's WASM build has no fast 4-bit "
                              "matmul (MatMulNBits dequantizes its weights on every call there); drop `int4` "
                              "or use target 'native'")
        if self.int8_budget < 0 or self.int4_budget < 0:
            raise ConfigError("quantization budgets must be >= 0 points")
        if not 0 <= self.prune_threshold < 1:
            raise ConfigError(f"prune threshold must be in [0, 1), got {self.prune_threshold}")
        if self.heldout_rows is not None and self.heldout_rows < 1:
            raise ConfigError(f"held-out rows must be >= 1 (or None: all), got {self.heldout_rows}")

    @property
    def precisions(self) -> list[str]:
        asked = [p for p, on in (("fp32", self.fp32), ("int8", self.int8), ("int4", self.int4)) if on]
        return asked or ["fp32"]


def graph_path(task: str | None, precision: str, mode: str = "multitask") -> str:
    """Where a graph sits in the bundle (flat: external-data paths stay inside the folder)."""
    if task is None:
        return f"model.{precision}.onnx"
    return f"task-{task}{'.merged' if mode == 'merged' else ''}.{precision}.onnx"


def confined(root: Path, rel: str) -> Path:
    """``root / rel`` after checking that ``rel`` is one plain file name, so the file lands
    directly inside ``root`` (the bundle is flat); a BundleError otherwise. Independent of the
    task-name rule, which is checked where names enter: this is the last guard before a write."""
    bad = (not rel or rel in (".", "..") or any(c in rel for c in "/\\\0") or Path(rel).name != rel
           or not rel.isprintable())
    path = Path(root) / rel
    if bad or os.path.normpath(path.parent) != os.path.normpath(root):
        raise BundleError(f"graph file name {rel!r} would be written outside the bundle {root} (a bundle is one "
                          "folder of plain file names); nothing was written")
    return path
