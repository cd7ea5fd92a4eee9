"""The compute dtype of training: bfloat16 autocast where the CPU computes it natively."""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matmuls in hardware (AVX512-BF16 or AMX). Without
    either, oneDNN emulates them: on an AVX2-only EPYC a bf16 SmolLM2 forward ran ~6.5x
    slower than fp32 (``benchmarks/bf16_bench.py``, docs/benchmarks.md)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


_warned_emulated = False


def resolve_dtype(compute_dtype: str) -> str:
    """``auto`` -> ``bfloat16`` where the CPU has native bf16, else ``float32``; an explicit
    ``bfloat16`` on a CPU without it is kept, with a warning (once) that it is slower."""
    global _warned_emulated
    if compute_dtype == "auto":
        return "bfloat16" if native_bf16() else "float32"
    if compute_dtype not in ("bfloat16", "float32"):
        raise ValueError(f"compute dtype {compute_dtype!r}: allowed are auto, bfloat16, float32")
    if compute_dtype == "bfloat16" and not _warned_emulated and not native_bf16():
        _warned_emulated = True
        log.warning("bfloat16 was asked for, but this CPU has no native bfloat16 (AVX512-BF16 or AMX): "
                    "it is emulated and several times slower than float32; use auto or float32")
    return compute_dtype


def autocast(compute_dtype: str):
    """bfloat16 autocast on the CPU, or nothing for float32 (``auto``: see ``resolve_dtype``)."""
    dtype = resolve_dtype(compute_dtype)
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=DTYPES[dtype])
