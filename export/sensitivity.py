"""Mixed precision by measured sensitivity: which matrices of an int4 export stay at 8 bits.

Each candidate group (``CANDIDATES``) is quantized alone, the way the export quantizes it, and the
task loss (the answer tokens' cross-entropy on the calibration rows, teacher-forced through the
PyTorch MTA model) is measured with that group's weights swapped in; ``choose_8bit`` keeps the
groups that cost the most per added byte at 8 bits within a byte budget.
"""

from __future__ import annotations

import time

import numpy as np

from .graph import quantize_blockwise
from .quant import SITES, QuantPlan

CANDIDATES = ("lm_head", "o", "qkv", "up", "down", "first", "last")


def site_modules(builder, i: int, site: str) -> list[object]:
    """The torch modules whose weights (stacked in this order) are a site's base matrix."""
    f = builder.fam
    layer = builder.layers[i]
    attn = getattr(layer, f.attn)
    if site == "qkv":
        return [getattr(attn, n) for n in f.qkv]
    if site == "o":
        return [getattr(attn, f.o)]
    mlp = getattr(layer, f.mlp)
    inner = getattr(mlp, "mlp", mlp) if hasattr(mlp, "kind") else mlp
    names = f.up if site == "up" else (f.down,)
    if not all(hasattr(inner, n) for n in names):
        return []  # an ffn MTA block: its experts replace the MLP's projections
    return [getattr(inner, n) for n in names]


class Swap:
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


def weight_param(module):
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
    mods = site_modules(builder, i, site)
    if not mods:
        return [], 0
    params = [weight_param(m) for m in mods]
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
    total = sum(weight_param(m)[0].numel() for i in range(L) for s in SITES for m in site_modules(builder, i, s))
    emb = builder.mta.base.get_input_embeddings() if builder.mta is not None else None
    total += emb.weight.numel() if emb is not None else 0
    out = {"fp32_loss": ref, "groups": {}, "total_weights": int(total)}
    for name in candidates:
        pairs, size, groups = _group_pairs(builder, plan, name, emb, bits, block_size)
        if not pairs:
            continue
        with Swap(pairs):
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
