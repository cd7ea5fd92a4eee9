"""bfloat16 autocast vs float32 on this CPU: one MLP-sized matmul and a whole SmolLM2
forward, run in turn (A B A B ...) so machine drift hits both alike; medians and ratios.

    python benchmarks/bf16_bench.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base-model", default="smollm2-135m")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a, w = torch.randn(1024, 576), torch.randn(1536, 576)  # SmolLM2's MLP up-projection shape
    ab, wb = a.bfloat16(), w.bfloat16()
    from alter_edge.base_model import load_base_model

    model, _, _ = load_base_model(args.base_model)
    ids = torch.randint(100, 40000, (16, 64))
    mask = torch.ones_like(ids)

    def forward():
        with torch.no_grad():
            model.base_model(input_ids=ids, attention_mask=mask)

    def forward_bf16():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model.base_model(input_ids=ids, attention_mask=mask)

    cases = {
        "matmul 1024x576 @ 576x1536, x10": (lambda: [torch.nn.functional.linear(a, w) for _ in range(10)],
                                            lambda: [torch.nn.functional.linear(ab, wb) for _ in range(10)]),
        "SmolLM2 forward, 16 x 64 tokens": (forward, forward_bf16),
    }
    for name, (f32, bf16) in cases.items():
        f32(), bf16()  # warm-up
        t32, t16 = [], []
        for _ in range(args.rounds):
            t32.append(_timed(f32))
            t16.append(_timed(bf16))
        m32, m16 = statistics.median(t32), statistics.median(t16)
        print(f"{name:<34} fp32 {m32:.3f} s  bf16 {m16:.3f} s  bf16 faster by {m32 / m16:.2f}x")


if __name__ == "__main__":
    main()
