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
from alter_edge.io import is_disk_full

from .batching import right_pad
from .memory import trim_heap
from .precision import DTYPES, autocast, resolve_dtype

CACHE_ROW_TOKENS = 256  # a cache batch holds batch_size x this many padded tokens at most

log = logging.getLogger(__name__)


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
    frozen_dtype = DTYPES[resolve_dtype(compute_dtype)]
    with model.frozen_weights_in(frozen_dtype, layers=range(model.adapted_layers[0])):
        for idx in _length_batches(order, seqs, batch_size * CACHE_ROW_TOKENS):
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
            try:
                save_file({f"h{i}": t for i, t in enumerate(out)}, str(tmp))  # streams, no bytes copy
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except Exception as e:  # a cache: a full disk (OSError, or safetensors' own error) only warns
            if not (isinstance(e, OSError) or is_disk_full(e)):
                raise
            log.warning("could not write the prefix cache to %s (%s); training goes on without it", path, e)
    return out  # type: ignore[return-value]


def _length_batches(order: Sequence[int], seqs: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """Rows in ``order`` (shortest first) grouped so a batch's rows x its longest row stay
    within ``max_tokens``: short rows run many to a batch, long ones few."""
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * len(seqs[i]) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def cache_bytes(cache: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in cache)


__all__ = ["build_prefix_cache", "cache_bytes"]
