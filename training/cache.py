"""The frozen-prefix activation cache.

With the base frozen and adapters only in the top blocks, the hidden states entering the
first adapted block are a fixed function of the input. They are computed once per example
(no grad, length-bucketed batches, stopping the forward at that block) and training runs
the top blocks only. A disk copy keyed by base weights, adapted block, token ids and dtype
lets later runs over the same data skip the work.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from alter_edge.base_model import cache_dir
from alter_edge.inject import MTAModel

from .memory import trim_heap

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def padded_length(n: int, multiple: int) -> int:
    """``n`` tokens rounded up to a multiple of ``multiple``: the length a batch is padded to."""
    return -(-n // multiple) * multiple


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), padded on the right to the longest row rounded up to
    ``multiple`` tokens."""
    T = padded_length(max(len(s) for s in seqs), multiple)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def cache_key(base_sha: str, first_layer: int, seqs: Sequence[Sequence[int]], dtype: str) -> str:
    h = hashlib.sha256(f"{base_sha}:{first_layer}:{dtype}:v1".encode())
    for s in seqs:
        h.update(len(s).to_bytes(4, "little"))
        h.update(b"".join(int(t).to_bytes(4, "little") for t in s))
    return h.hexdigest()[:32]


def build_prefix_cache(
    model: MTAModel,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    base_sha: str,
    dtype: str = "float16",
    batch_size: int = 16,
    use_disk: bool = True,
    progress: bool = True,
    compute_dtype: str = "float32",
) -> list[torch.Tensor]:
    """One tensor (len_i, H) per sequence: the input of the first adapted block."""
    from safetensors.torch import load_file

    key = cache_key(base_sha, model.adapted_layers[0], seqs, f"{dtype}/{compute_dtype}")
    path = cache_dir() / "prefix" / f"{key}.safetensors"
    if use_disk and path.is_file():
        try:
            d = load_file(str(path))
            log.info("frozen-prefix cache: reusing %s", path)
            return [d[f"h{i}"] for i in range(len(seqs))]
        except Exception as e:  # a corrupt cache file is rebuilt, not trusted
            log.warning("ignoring unreadable prefix cache %s (%s)", path, e)
    torch_dtype = DTYPES[dtype]
    out: list[torch.Tensor | None] = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    bar = tqdm(total=len(seqs), desc="prefix cache", unit="ex", disable=not progress)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask = right_pad([seqs[i] for i in idx], pad_id)
        with autocast(compute_dtype):
            h = model.prefix_hidden(ids, mask)  # (B, T, H)
        if torch_dtype == torch.float16 and h.abs().max() > 6e4:
            raise OverflowError("prefix hidden states overflow float16: use cache_dtype float32")
        for j, i in enumerate(idx):
            out[i] = h[j, : len(seqs[i])].to(torch_dtype).clone()
        bar.update(len(idx))
    bar.close()
    trim_heap()
    if use_disk:
        try:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file({f"h{i}": t for i, t in enumerate(out)}, str(tmp))  # streams, no bytes copy
            os.replace(tmp, path)
        except OSError as e:
            log.warning("could not write the prefix cache to %s (%s)", path, e)
    return out  # type: ignore[return-value]


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
    import contextlib

    dtype = resolve_dtype(compute_dtype)
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=DTYPES[dtype])


def cache_bytes(cache: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in cache)


def pad_hidden(hs: Sequence[torch.Tensor], T: int) -> torch.Tensor:
    """Right-pad cached (len_i, H) tensors into a float32 (B, T, H) batch."""
    H = hs[0].shape[-1]
    out = torch.zeros(len(hs), T, H, dtype=torch.float32)
    for i, h in enumerate(hs):
        out[i, : h.shape[0]] = h.float()
    return out


__all__ = ["autocast", "build_prefix_cache", "cache_bytes", "native_bf16", "pad_hidden", "padded_length", "resolve_dtype",
           "right_pad"]
