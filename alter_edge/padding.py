"""The one padding helper every stage uses (torch-free: numpy arrays, which torch code wraps
with ``torch.from_numpy``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def padded_length(n: int, multiple: int) -> int:
    """``n`` tokens rounded up to a multiple of ``multiple``: the length a batch is padded to."""
    return -(-n // multiple) * multiple


def pad_rows(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right",
             multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (B, T), lengths int64 (B,)): every row padded with ``pad_id`` on ``side``
    (right or left) to the longest row, rounded up to a multiple of ``multiple`` tokens."""
    if side not in ("right", "left"):
        raise ValueError(f"side {side!r}: allowed are right, left")
    lengths = np.asarray([len(s) for s in seqs], dtype=np.int64)
    T = padded_length(int(lengths.max()) if len(seqs) else 0, multiple)
    ids = np.full((len(seqs), T), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        if len(s):
            if side == "right":
                ids[i, : len(s)] = s
            else:
                ids[i, T - len(s):] = s
    return ids, lengths


def length_mask(lengths: np.ndarray, T: int, side: str = "right") -> np.ndarray:
    """int64 (B, T): 1 on each row's tokens, 0 on its padding."""
    pos = np.arange(T)[None, :]
    n = lengths[:, None]
    return (pos < n if side == "right" else pos >= T - n).astype(np.int64)
