"""The int4 quantizer: which bits each stored matrix gets and how it is rounded.

- ``rtn``: round to nearest, block-wise (``export.graph.quantize_blockwise``), symmetric or with a
  zero point per block.
- ``gptq``: error compensation from calibration activations (Frantar et al., 2022, "GPTQ"):
  the columns of a weight are rounded one at a time, in order, and each column's rounding
  error is pushed onto the columns not yet rounded through the inverse of the layer input's
  Hessian ``H = X^T X`` (``X`` the inputs the projection sees on calibration rows), so the
  error the layer's *output* sees is what is minimized, not the weight's. Scales and zero
  points are chosen per block of ``block_size`` columns when the block is reached, from the
  already-compensated weights: the layout is exactly ``MatMulNBits``' and the graph is unchanged.

The calibration rows are the checkpoint's own train rows (prompt and answer, teacher-forced
through the PyTorch MTA model, every task with its own task id): the Hessians are those of
the activations the tasks produce. Everything is deterministic: the rows are taken in file
order, the math is float64 on the CPU.

A stored matrix is named by its key in the weight file (``layers.3.qkv.wb``: layer 3's packed
q/k/v with the LoRA B factors beside it). The key names the input the matrix reads: a key's
*site* is ``(layer, qkv | o | up | down)``. In a joined ``[W | B]`` matrix the base columns
``W`` use the site's Hessian and the ``B`` columns (whole blocks of their own) are rounded to
nearest; a LoRA ``A`` factor reads the same input as the base, so it uses the same Hessian.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

import numpy as np

from .blockquant import split_blocks
from .graph import QuantizedMatrix, block_grid, pack_codes, quantize_blockwise

log = logging.getLogger(__name__)

METHODS = ("rtn", "gptq")
SITES = ("qkv", "o", "up", "down")
# a stored key -> (layer, the projection's name in the key, joined | lora_A | None)
_KEY = re.compile(r"^layers\.(\d+)\.(?:(qkv|o)|mlp\.(gate_up|gu|up|down|dn)|expert\d+\.(gate_up|up))"
                  r"(?:\.(wb|lora_A))?$")
_SITE = {"qkv": "qkv", "o": "o", "gate_up": "up", "gu": "up", "up": "up", "down": "down", "dn": "down"}


def site_of(key: str | None) -> tuple[int, str, str | None] | None:
    """``(layer, site, part)`` of a stored key (``part``: ``wb`` a joined ``[W | B]``, ``lora_A``),
    None for a key that reads no calibrated input (the embedding / lm_head, a bottleneck factor,
    an expert's down projection)."""
    m = _KEY.match(key or "")
    if not m:
        return None
    name = m.group(2) or m.group(3) or m.group(4)
    return int(m.group(1)), _SITE[name], m.group(5)


def group_of(key: str) -> str:
    """The precision group a stored key belongs to: ``lm_head`` (the tied embedding and the
    lm_head, or the untied ones), ``layers.<i>.<site>``, or the key itself."""
    if key in ("lm_head", "embed", "lm_head_untied"):
        return "lm_head"
    s = site_of(key)
    return key if s is None else f"layers.{s[0]}.{s[1]}"


# -- GPTQ -------------------------------------------------------------------------------------

def gptq_quantize(w: np.ndarray, H: np.ndarray, bits: int, block_size: int, symmetric: bool = True,
                  damp: float = 0.01) -> QuantizedMatrix:
    """``w (N, K)`` quantized with error compensation under the input Hessian ``H (K, K)``
    (``sum x x^T`` over calibration tokens). ``damp``: added to the diagonal, a fraction of its
    mean (the Hessian of a few thousand tokens is near singular)."""
    import torch

    N, K = w.shape
    W = torch.from_numpy(split_blocks(w, block_size).reshape(N, -1).astype(np.float64))  # padded to whole blocks
    Kp = W.shape[1]
    Hp = np.zeros((Kp, Kp), np.float64)
    Hp[:K, :K] = H
    Ht = torch.from_numpy(Hp)
    dead = torch.diagonal(Ht) <= 0  # inputs never active (and the padding): their columns are free
    Ht[dead, dead] = 1.0
    W[:, dead] = 0.0
    Ht += torch.eye(Kp, dtype=torch.float64) * (damp * float(torch.diagonal(Ht).mean()))
    # the upper Cholesky factor of H^-1: row j holds how column j's error spreads to the columns after it
    L = torch.linalg.cholesky(Ht)
    Hinv = torch.cholesky_inverse(L)
    U = torch.linalg.cholesky(Hinv, upper=True)
    nb = Kp // block_size
    scales = np.zeros((N, nb), np.float32)
    zeros = np.zeros((N, nb), np.float32)
    Q = torch.zeros_like(W)
    qmin, qmax = (0, 2 ** bits - 1)
    for b in range(nb):
        c0, c1 = b * block_size, (b + 1) * block_size
        Wb = W[:, c0:c1].clone()
        s, z = block_grid(Wb.numpy()[:, None, :].astype(np.float32), bits, symmetric)
        scales[:, b], zeros[:, b] = s[:, 0], z[:, 0]
        st = torch.from_numpy(s[:, 0].astype(np.float64))
        zt = torch.from_numpy(z[:, 0].astype(np.float64))
        Ub = U[c0:c1, c0:c1]
        E = torch.zeros_like(Wb)
        for j in range(block_size):
            col = Wb[:, j]
            q = torch.clamp(torch.round(col / st) + zt, qmin, qmax)
            Q[:, c0 + j] = q
            err = (col - (q - zt) * st) / Ub[j, j]
            Wb[:, j:] -= err[:, None] * Ub[j, j:][None, :]
            E[:, j] = err
        W[:, c1:] -= E @ U[c0:c1, c1:]  # the block's errors onto every later column at once
    codes = Q.numpy().reshape(N, nb, block_size)
    zp = None if symmetric else zeros.astype(np.uint8)
    return QuantizedMatrix(pack_codes(codes, bits), scales, bits, block_size, K, zp)


# -- calibration ------------------------------------------------------------------------------

def calibration_modules(builder) -> dict[tuple[int, str], object]:
    """Per layer, the module whose input is each site's input: the first q/k/v projection, the
    o projection, the MLP (or the MTA block in its place: the input of gate/up, and of an ffn
    block's experts), the down projection (none for an ffn block's experts)."""
    f = builder.fam
    out = {}
    for i, layer in enumerate(builder.layers):
        attn = getattr(layer, f.attn)
        out[(i, "qkv")] = getattr(attn, f.qkv[0])
        out[(i, "o")] = getattr(attn, f.o)
        mlp = getattr(layer, f.mlp)
        out[(i, "up")] = mlp
        inner = getattr(mlp, "mlp", mlp) if hasattr(mlp, "kind") else mlp
        if hasattr(inner, f.down):  # an ffn MTA block's experts have no down projection of their own
            out[(i, "down")] = getattr(inner, f.down)
    return out


def collect_hessians(model, builder, sequences: list[list[int]], task_ids: list[int], pad_id: int,
                     batch: int = 8) -> tuple[dict[tuple[int, str], np.ndarray], int]:
    """``sum x x^T`` of each site's input over every real token of ``sequences`` (each run with its
    task id); returns the Hessians and the token count."""
    import torch

    from alter_edge.padding import pad_rows

    sums: dict[tuple[int, str], torch.Tensor] = {}
    state = {"mask": None}

    def hook_for(site):
        def hook(_module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            x = x.detach().float().reshape(-1, x.shape[-1])[state["mask"]]
            h = (x.T @ x).double()  # one batch in float32, the running sum in float64
            sums[site] = h if site not in sums else sums[site] + h
        return hook

    handles = [m.register_forward_pre_hook(hook_for(site), with_kwargs=True)
               for site, m in calibration_modules(builder).items()]
    tokens = 0
    try:
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        with torch.no_grad():
            for s in range(0, len(order), batch):
                rows = order[s:s + batch]
                ids, lengths = pad_rows([sequences[i] for i in rows], pad_id)
                ids = torch.from_numpy(np.asarray(ids, np.int64))
                mask = (torch.arange(ids.shape[1])[None, :] < torch.from_numpy(np.asarray(lengths))[:, None])
                state["mask"] = mask.reshape(-1)
                tokens += int(mask.sum())
                model(ids, mask.long(), torch.tensor([task_ids[i] for i in rows]))
    finally:
        for h in handles:
            h.remove()
    return {k: v.numpy() for k, v in sums.items()}, tokens


# -- the plan ---------------------------------------------------------------------------------

@dataclass
class QuantPlan:
    """How an int4 graph's stored matrices are quantized: ``method`` (rtn | gptq) at
    ``default_bits``, ``symmetric`` or with zero points, ``bits`` per precision group
    (``group_of``) for the groups kept at other bits (mixed precision), the calibration
    Hessians per site (gptq)."""

    method: str = "rtn"
    symmetric: bool = True
    group_bits: dict[str, int] = field(default_factory=dict)
    hessians: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    damp: float = 0.01
    block_size_8bit: int | None = None  # the 8-bit groups' block size (None: the graph's)
    seconds: float = 0.0  # time spent quantizing
    methods_used: dict[str, str] = field(default_factory=dict)  # key -> what rounded it
    _base: dict = field(default_factory=dict, repr=False)  # GPTQ of each site's base matrix, by bits

    def bits(self, key: str, default: int) -> int:
        return self.group_bits.get(group_of(key), default)

    def block_size(self, w: np.ndarray, bits: int, block_size: int) -> int:
        """8-bit matrices of an int4 graph take ``block_size_8bit`` (coarser scales: 8 bits need
        fewer) where the input width is whole blocks of it."""
        b8 = self.block_size_8bit
        if bits == 8 and b8 and w.shape[1] % b8 == 0 and b8 > block_size:
            return b8
        return block_size

    def quantize(self, key: str | None, w: np.ndarray, bits: int, block_size: int) -> QuantizedMatrix:
        block_size = self.block_size(w, bits, block_size) if self.group_bits else block_size
        t0 = time.perf_counter()
        q, how = self._quantize(key, w, bits, block_size)
        self.seconds += time.perf_counter() - t0
        if key is not None:
            self.methods_used[key] = how
        return q

    def _rtn(self, w, bits, block_size):
        return quantize_blockwise(w, bits, block_size, symmetric=self.symmetric)

    def _gptq(self, site, part, w, H, bits, block_size) -> QuantizedMatrix:
        """GPTQ of a site's base matrix (once: the sensitivity pass and every graph reuse it) or
        of a lora A factor."""
        if part == "lora_A":
            return gptq_quantize(w, H, bits, block_size, self.symmetric, self.damp)
        key = (site[0], site[1], bits, block_size, w.shape)
        if key not in self._base:
            self._base[key] = gptq_quantize(w, H, bits, block_size, self.symmetric, self.damp)
        return self._base[key]

    def _quantize(self, key, w, bits, block_size) -> tuple[QuantizedMatrix, str]:
        site = site_of(key)
        H = self.hessians.get(site[:2]) if site is not None and self.method == "gptq" else None
        if H is None or w.shape[1] < H.shape[0]:
            return self._rtn(w, bits, block_size), "rtn"
        K = H.shape[0]
        if w.shape[1] == K:  # the base alone, or a lora A factor: it reads the site's input
            return self._gptq(site, site[2], w, H, bits, block_size), "gptq"
        if site[2] != "wb" or K % block_size:
            return self._rtn(w, bits, block_size), "rtn"
        # [W | B]: W with the Hessian, B's columns (the adapters' hidden, blocks of their own) to nearest
        base = self._gptq(site, None, w[:, :K], H, bits, block_size)
        return QuantizedMatrix.join([base, self._rtn(w[:, K:], bits, block_size)]), "gptq (W), rtn (B)"

    def describe(self) -> dict:
        return {"method": self.method, "zero_points": not self.symmetric, "group_bits": dict(self.group_bits),
                "sites_calibrated": len(self.hessians), "seconds": round(self.seconds, 1)}


def expand_groups(spec: str | None, num_layers: int) -> list[str]:
    """Precision groups named by a comma list: ``lm_head``; a site in every layer (``qkv``, ``o``,
    ``up``, ``down``); a whole block (``first``, ``last``, ``layers.<i>``); one site of one block
    (``layers.<i>.<site>``)."""
    out: list[str] = []
    for item in [s.strip() for s in (spec or "").split(",") if s.strip()]:
        if item == "none":
            continue
        if item == "lm_head":
            out.append("lm_head")
        elif item in SITES:
            out += [f"layers.{i}.{item}" for i in range(num_layers)]
        elif item in ("first", "last") or re.fullmatch(r"layers\.\d+", item):
            i = 0 if item == "first" else num_layers - 1 if item == "last" else int(item.split(".")[1])
            if not 0 <= i < num_layers:
                raise ValueError(f"{item}: the model has {num_layers} layers")
            out += [f"layers.{i}.{s}" for s in SITES]
        elif re.fullmatch(r"layers\.\d+\.(qkv|o|up|down)", item):
            out.append(item)
        else:
            raise ValueError(f"unknown precision group {item!r}: lm_head, qkv, o, up, down, first, last, "
                             "layers.<i> or layers.<i>.<site>")
    return list(dict.fromkeys(out))


# -- mixed precision by measured sensitivity ---------------------------------------------------
