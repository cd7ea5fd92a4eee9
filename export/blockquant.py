"""Block-wise quantization of weight matrices (numpy only), the layout of onnxruntime's
``MatMulNBits``: ``B [N, blocks, block_size * bits / 8]`` uint8, two 4-bit values a byte, low
nibble first; symmetric (implicit zero point ``2^(bits-1)``) or with zero points; ``scales
[N * blocks]``. Also int8 rows with one scale each (the ``integer`` int8 layout). Graphs are
written with them by ``export.graph.GraphBuilder``; GPTQ rounding is ``export.quant``'s."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuantizedMatrix:
    """``W (N, K)`` quantized to ``bits`` in blocks of ``block_size`` along K: ``w = (q - z) * s``,
    ``z`` the block's zero point (``zero_points``; None: the implicit ``2^(bits-1)``, symmetric)."""

    data: np.ndarray  # uint8 (N, blocks, block_size * bits // 8)
    scales: np.ndarray  # float32 (N, blocks)
    bits: int
    block_size: int
    K: int
    zero_points: np.ndarray | None = None  # uint8 (N, blocks), one value a byte (unpacked)

    @property
    def N(self) -> int:
        return self.data.shape[0]

    def codes(self) -> np.ndarray:
        """The unpacked codes ``(N, blocks, block_size)``."""
        q = self.data
        if self.bits == 4:
            q = np.stack([q & 15, q >> 4], axis=-1).reshape(q.shape[0], q.shape[1], -1)
        return q

    def zeros(self) -> np.ndarray:
        if self.zero_points is None:
            return np.full(self.scales.shape, 2 ** (self.bits - 1), np.float32)
        return self.zero_points.astype(np.float32)

    def dequantize(self) -> np.ndarray:
        w = (self.codes().astype(np.float32) - self.zeros()[..., None]) * self.scales[..., None]
        return w.reshape(self.N, -1)[:, : self.K]

    def packed_zero_points(self) -> np.ndarray | None:
        """The zero points as ``MatMulNBits`` / ``GatherBlockQuantized`` read them: 8-bit one a
        byte ``(N, blocks)``; 4-bit two a byte, low nibble first, each row padded to whole bytes
        ``(N, ceil(blocks / 2))``."""
        if self.zero_points is None:
            return None
        z = self.zero_points
        if self.bits == 8:
            return np.ascontiguousarray(z)
        if z.shape[1] % 2:
            z = np.concatenate([z, np.full((z.shape[0], 1), 8, np.uint8)], axis=1)
        return np.ascontiguousarray(z[:, 0::2] | (z[:, 1::2] << 4))

    @staticmethod
    def join(parts: list[QuantizedMatrix]) -> QuantizedMatrix:
        """Matrices side by side along K (each but the last whole blocks): one matrix of their
        blocks, quantized exactly as apart."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        assert all(p.K % p.block_size == 0 for p in parts[:-1]), "only the last part may end in a partial block"
        if any(p.zero_points is not None for p in parts):
            zp = np.concatenate([p.zero_points if p.zero_points is not None else
                                 np.full(p.scales.shape, 2 ** (p.bits - 1), np.uint8) for p in parts], axis=1)
        else:
            zp = None
        return QuantizedMatrix(np.concatenate([p.data for p in parts], axis=1),
                               np.concatenate([p.scales for p in parts], axis=1), first.bits, first.block_size,
                               sum(p.K for p in parts), zp)


def quantize_rows_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``W (N, K)`` -> int8 ``(N, K)`` and one scale per row ``(N,)``: symmetric, [-127, 127].
    The weights of the ``integer`` int8 layout (``MatMulInteger``, per output channel)."""
    w = np.asarray(w, dtype=np.float32)
    scale = np.abs(w).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q), scale.astype(np.float32)


def split_blocks(w: np.ndarray, block_size: int) -> np.ndarray:
    """``w (N, K)`` as ``(N, ceil(K / block_size), block_size)`` blocks along K, the last zero-padded."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    N, K = w.shape
    nb = -(-K // block_size)
    if nb * block_size != K:
        w = np.concatenate([w, np.zeros((N, nb * block_size - K), np.float32)], axis=1)
    return w.reshape(N, nb, block_size)


def block_grid(blk: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scales and zero points ``(..., )`` of blocks ``(..., block_size)``: symmetric (absmax over
    ``2^(bits-1) - 1``, zero point ``2^(bits-1)``) or asymmetric (min..max over ``2^bits - 1``
    levels, the zero point the code of 0, so zeros stay exact)."""
    if symmetric:
        scales = np.abs(blk).max(-1) / (2 ** (bits - 1) - 1)
        scales[scales == 0] = 1.0
        return scales.astype(np.float32), np.full(scales.shape, 2 ** (bits - 1), np.float32)
    lo = np.minimum(blk.min(-1), 0.0)
    hi = np.maximum(blk.max(-1), 0.0)
    scales = (hi - lo) / (2 ** bits - 1)
    scales[scales == 0] = 1.0
    zeros = np.clip(np.rint(-lo / scales), 0, 2 ** bits - 1)
    return scales.astype(np.float32), zeros.astype(np.float32)


def pack_codes(q: np.ndarray, bits: int) -> np.ndarray:
    """Codes ``(N, blocks, block_size)`` (0..2^bits-1) as MatMulNBits' bytes."""
    q = q.astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return np.ascontiguousarray(q)


def quantize_blockwise(w: np.ndarray, bits: int, block_size: int, symmetric: bool = True) -> QuantizedMatrix:
    """Round to nearest, block-wise along K: symmetric (the implicit zero point) or
    asymmetric (a zero point per block)."""
    K = w.shape[1]
    blk = split_blocks(w, block_size)
    scales, zeros = block_grid(blk, bits, symmetric)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        q = np.clip(np.rint(blk / scales[..., None]), -qmax - 1, qmax) + 2 ** (bits - 1)
        zp = None
    else:
        q = np.clip(np.rint(blk / scales[..., None]) + zeros[..., None], 0, 2 ** bits - 1)
        zp = zeros.astype(np.uint8)
    return QuantizedMatrix(pack_codes(q, bits), scales, bits, block_size, K, zp)
