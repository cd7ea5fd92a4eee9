"""A fast proxy for choosing an int4 layout: the task loss (the answers' cross-entropy,
teacher-forced through the PyTorch MTA model) on the first ROWS calibration rows of each task,
with every base matrix replaced by its quantized-dequantized values as the export quantizes
it (GPTQ from the Hessians of the first CALIB train rows of each task). The LoRA factors stay
fp32 and activations are not quantized (accuracy_level is not modelled): a ranking, not the
export's gate (``benchmarks/int4_variants.py`` runs the gate).

    python benchmarks/int4_proxy.py runs/quickstart/checkpoint --calib 8 --rows 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--calib", type=int, default=8, help="train rows per task for the Hessians")
    ap.add_argument("--rows", type=int, default=4, help="of those, rows per task the loss is measured on")
    a = ap.parse_args()

    from alter_edge.export.graph import quantize_blockwise
    from alter_edge.export.pipeline import ExportOptions, _Export
    from alter_edge.export.quant import SITES, QuantPlan, collect_hessians, expand_groups
    from alter_edge.export.sensitivity import Swap, measure_sensitivity, site_modules, weight_param
    from alter_edge.testing import cpu_flags
    from alter_edge.training.checkpoint import load_checkpoint

    ck = load_checkpoint(a.checkpoint)
    ex = _Export(ck, ExportOptions(tasks=None, int4=True, calibration_rows=a.calib, heldout_rows=1), {})
    prompts, answers, tids = ex.calibration()
    t = time.time()
    H, tokens = collect_hessians(ck.model, ex.builder, [p + q for p, q in zip(prompts, answers, strict=True)], tids,
                                 ex.pad)
    print(f"hessians: {len(prompts)} rows, {tokens} tokens, {time.time() - t:.0f}s", flush=True)
    keep = [i for i, tid in enumerate(tids) if sum(t == tid for t in tids[:i]) < a.rows]
    P, A, T = ([x[i] for i in keep] for x in (prompts, answers, tids))
    b = ex.builder
    L = len(b.layers)

    def swapped(plan: QuantPlan, lm_bits: int, eight: set[str]) -> list:
        out = []
        for i in range(L):
            for s in SITES:
                params = [weight_param(m) for m in site_modules(b, i, s)]
                ws = [p.detach().float().numpy() for p, _ in params]
                W = np.concatenate(ws, 0)
                bits = 8 if f"layers.{i}.{s}" in eight else 4
                deq = plan._quantize(f"layers.{i}.{s}", W, bits, 32)[0].dequantize()
                r = 0
                for (p, _), w in zip(params, ws, strict=True):
                    out.append((p, np.ascontiguousarray(deq[r:r + w.shape[0]])))
                    r += w.shape[0]
        emb = ck.model.base.get_input_embeddings()
        w = emb.weight.detach().float().numpy()
        q = quantize_blockwise(w, lm_bits, 32 if lm_bits == 4 else 64, symmetric=plan.symmetric or lm_bits == 8)
        out.append((emb.weight, q.dequantize()))
        return out

    def loss() -> float:
        return measure_sensitivity(ck.model, b, QuantPlan(), P, A, T, ex.pad, 32, candidates=())["fp32_loss"]

    ref = loss()
    print(f"machine: {cpu_flags()}\nfp32 task loss {ref:.4f} on {len(P)} rows", flush=True)
    rs, rz = QuantPlan("rtn", True), QuantPlan("rtn", False)
    gs, gz = QuantPlan("gptq", True, hessians=H), QuantPlan("gptq", False, hessians=H)
    for name, plan, lm, eight in [("rtn", rs, 4, ""), ("rtn+zp", rz, 4, ""), ("gptq", gs, 4, ""), ("gptq+zp", gz, 4, ""),
                                  ("gptq+zp+first,last", gz, 4, "first,last"), ("gptq+zp+o", gz, 4, "o"),
                                  ("gptq+zp+lm8", gz, 8, ""), ("rtn+lm8", rs, 8, "")]:
        t = time.time()
        with Swap(swapped(plan, lm, set(expand_groups(eight, L)))):
            x = loss()
        print(f"{name:<20} loss {x:.4f} (+{x - ref:.4f})  {time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
