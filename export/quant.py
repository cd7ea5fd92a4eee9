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

from .graph import QuantizedMatrix, _blocks, block_grid, pack_codes, quantize_blockwise

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
    W = torch.from_numpy(_blocks(w, block_size).reshape(N, -1).astype(np.float64))  # padded to whole blocks
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
        if getattr(mlp, "kind", None) != "ffn" and hasattr(inner, f.down):
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

CANDIDATES = ("lm_head", "o", "qkv", "up", "down", "first", "last")


def _site_modules(builder, i: int, site: str) -> list[object]:
    """The torch modules whose weights (stacked in this order) are a site's base matrix."""
    f = builder.fam
    layer = builder.layers[i]
    attn = getattr(layer, f.attn)
    if site == "qkv":
        return [getattr(attn, n) for n in f.qkv]
    if site == "o":
        return [getattr(attn, f.o)]
    mlp = getattr(layer, f.mlp)
    if getattr(mlp, "kind", None) == "ffn":
        return []
    inner = getattr(mlp, "mlp", mlp) if hasattr(mlp, "kind") else mlp
    return [getattr(inner, n) for n in (f.up if site == "up" else (f.down,))]


class _Swap:
    """Torch weights replaced by their quantized-dequantized values, restored on exit."""

    def __init__(self, pairs: list[tuple[object, np.ndarray]]):
        self.pairs = pairs  # (parameter, new value in the parameter's own layout)
        self.saved: list = []

    def __enter__(self):
        import torch

        for p, v in self.pairs:
            self.saved.append(p.data.clone())
            p.data.copy_(torch.from_numpy(v).to(p.dtype))
        return self

    def __exit__(self, *exc):
        for (p, _), old in zip(self.pairs, self.saved, strict=True):
            p.data.copy_(old)


def _weight_param(module):
    m = getattr(module, "base_layer", module)
    return m.weight, hasattr(m, "nf")  # transformers' Conv1D stores (in, out)


def _answer_loss(model, prompts: list[list[int]], answers: list[list[int]], task_ids: list[int], pad_id: int,
                 batch: int) -> float:
    """The task loss: mean cross-entropy of the answer tokens, teacher-forced."""
    import torch

    from alter_edge.padding import pad_rows

    seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
    total, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(seqs), batch):
            rows = list(range(s, min(s + batch, len(seqs))))
            ids, lengths = pad_rows([seqs[i] for i in rows], pad_id)
            ids = torch.from_numpy(np.asarray(ids, np.int64))
            mask = (torch.arange(ids.shape[1])[None, :] < torch.from_numpy(np.asarray(lengths))[:, None]).long()
            bi, pi, tgt = [], [], []
            for r, i in enumerate(rows):
                p = len(prompts[i])
                for j, tok in enumerate(answers[i]):
                    bi.append(r)
                    pi.append(p - 1 + j)
                    tgt.append(tok)
            if not tgt:  # rows without answers (no calibration data): nothing to score
                continue
            logits = model.logits_at(ids, mask, torch.tensor([task_ids[i] for i in rows]),
                                     (torch.tensor(bi, dtype=torch.long), torch.tensor(pi, dtype=torch.long)))
            total += float(torch.nn.functional.cross_entropy(logits.float(), torch.tensor(tgt), reduction="sum"))
            n += len(tgt)
    return total / max(n, 1)


def _site_pairs(builder, plan: QuantPlan, i: int, site: str, bits: int, block_size: int) -> tuple[list, int]:
    """(each weight of layer ``i``'s ``site`` paired with its quantized-dequantized copy, weights)."""
    mods = _site_modules(builder, i, site)
    if not mods:
        return [], 0
    params = [_weight_param(m) for m in mods]
    ws = [(p.detach().float().numpy().T if conv else p.detach().float().numpy()) for p, conv in params]
    W = np.concatenate(ws, 0)
    deq = plan._quantize(f"layers.{i}.{site}", W, bits, block_size)[0].dequantize()
    out, row = [], 0
    for (p, conv), w in zip(params, ws, strict=True):
        part = deq[row:row + w.shape[0]]
        row += w.shape[0]
        out.append((p, np.ascontiguousarray(part.T if conv else part)))
    return out, W.size


def _group_pairs(builder, plan: QuantPlan, name: str, emb, bits: int, block_size: int) -> tuple[list, int, list]:
    """(weight pairs, weights, member groups) of candidate group ``name`` at ``bits``."""
    if name == "lm_head":
        if emb is None or not builder.tied:
            return [], 0, []
        w = emb.weight.detach().float().numpy()
        deq = quantize_blockwise(w, bits, block_size, symmetric=plan.symmetric).dequantize()
        return [(emb.weight, deq)], w.size, ["lm_head"]
    L = len(builder.layers)
    sites = [(i, name) for i in range(L)] if name in SITES else [(0 if name == "first" else L - 1, s) for s in SITES]
    pairs, size, groups = [], 0, []
    for i, s in sites:
        p, n = _site_pairs(builder, plan, i, s, bits, block_size)
        pairs += p
        size += n
        groups += [f"layers.{i}.{s}"] if p else []
    return pairs, size, groups


def measure_sensitivity(model, builder, plan: QuantPlan, prompts: list[list[int]], answers: list[list[int]],
                        task_ids: list[int], pad_id: int, block_size: int, bits: int = 4,
                        candidates: tuple[str, ...] = CANDIDATES, batch: int = 8) -> dict:
    """Each candidate group alone at ``bits`` (quantized as ``plan`` quantizes it, every other
    weight fp32): the increase of the task loss (mean cross-entropy of the answer tokens,
    teacher-forced) on the calibration rows; and the bytes keeping it at 8 bits adds."""
    L = len(builder.layers)
    t0 = time.perf_counter()
    ref = _answer_loss(model, prompts, answers, task_ids, pad_id, batch)
    total = sum(_weight_param(m)[0].numel() for i in range(L) for s in SITES for m in _site_modules(builder, i, s))
    emb = builder.mta.base.get_input_embeddings() if builder.mta is not None else None
    total += emb.weight.numel() if emb is not None else 0
    out = {"fp32_loss": ref, "groups": {}, "total_weights": int(total)}
    for name in candidates:
        pairs, size, groups = _group_pairs(builder, plan, name, emb, bits, block_size)
        if not pairs:
            continue
        with _Swap(pairs):
            loss = _answer_loss(model, prompts, answers, task_ids, pad_id, batch)
        out["groups"][name] = {"loss_increase": round(loss - ref, 5), "weights": size, "members": groups}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def choose_8bit(sensitivity: dict, budget_bytes: float, zero_points: bool) -> list[str]:
    """Candidate groups kept at 8 bits: the most loss-increase per added byte first, while the
    added bytes fit ``budget_bytes``; a group whose 4 bits cost nothing measurable (no loss
    increase) stays at 4."""
    # 8 bits instead of 4: half a byte more per weight (a zero point: half a byte more per block)
    ranked = sorted(sensitivity["groups"].items(), key=lambda kv: -kv[1]["loss_increase"] / kv[1]["weights"])
    chosen: list[str] = []
    used = 0.0
    for _name, g in ranked:
        new = [m for m in g["members"] if m not in chosen]
        if g["loss_increase"] <= 0 or not new:
            continue
        extra = g["weights"] * len(new) / len(g["members"]) * (0.5 + (0.5 / 32 if zero_points else 0))
        if used + extra <= budget_bytes:
            chosen += new
            used += extra
    return chosen
