"""The torch-free runtime against PyTorch eager on the same MTA checkpoint, interleaved.

    python benchmarks/runtime_bench.py --work /tmp/bench --rounds 3 --threads 2

Builds (once, under --work) a random-adapter LoRA checkpoint on the built-in SmolLM2-135M and
exports it with ``alter_edge.export`` (multi-task graph + one per-task graph, fp32 and int8),
then runs A/B rounds in this process: each round times every engine once at batch 1 and 8
(32-token prompt, 64 greedy tokens, eos ignored). Prints medians and ratios against PyTorch
eager fp32; the host's speed drifts, so only ratios from one run mean much. Also times a cold
start (a fresh process: import, load, first token) and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from alter_edge.testing import random_adapter_bundle, time_torch_greedy

# PyTorch's OpenMP workers busy-wait by default; on a shared, oversubscribed CPU that made eager
# decoding ~4x slower here (3.8 vs 16 tok/s). Passive waiting matches onnxruntime's
# spinning=False below, so both sides wait the same way. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cold_start(bundle: Path, task: str, threads: int, precision: str | None) -> dict:
    code = (
        "import time; t0 = time.perf_counter()\n"
        "from alter_edge.runtime import EdgeModel\n"
        "from alter_edge.runtime.bench import peak_rss_mb\n"
        f"m = EdgeModel.load({str(bundle)!r}, threads={threads}, precision={precision!r}, tasks=[{task!r}])\n"
        f"m.generate('repeat cat dog', task={task!r}, max_new_tokens=1)\n"
        "print(time.perf_counter() - t0, peak_rss_mb())\n"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    inner, rss = map(float, out.stdout.split())
    return {"process_s": round(wall, 3), "import_load_first_token_s": round(inner, 3), "peak_rss_mb": round(rss, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/bench"))
    ap.add_argument("--base-model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from alter_edge.runtime import EdgeModel
    from alter_edge.runtime.bench import synthetic_prompt, time_generation
    from alter_edge.training.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    ckpt_dir, bundle = random_adapter_bundle(args.work, args.base_model, not args.no_int8)
    ck = load_checkpoint(ckpt_dir)
    engines = {}
    for prec in ("fp32", "int8"):
        try:
            # no spinning: idle onnxruntime workers would otherwise busy-wait into the next
            # engine's turn (PyTorch's), which biases an interleaved A/B in our favour
            m = EdgeModel.load(bundle, threads=args.threads, precision=prec, spinning=False)
        except Exception as e:  # noqa: BLE001 - a bundle without int8 graphs
            print(f"skip {prec}: {e}", file=sys.stderr)
            continue
        # multi-task graph (task 'colour' has no per-task graph) and the per-task graph of 'echo'
        engines[f"ort-{prec}-multitask"] = (m, "colour")
        engines[f"ort-{prec}-pertask"] = (m, "echo")
    prompt = synthetic_prompt(next(iter(engines.values()))[0], args.prompt_tokens)
    results: dict[str, dict[str, list[float]]] = {}

    def record(name: str, key: str, value: float) -> None:
        results.setdefault(name, {}).setdefault(key, []).append(value)

    for r in range(args.rounds):
        for batch in (1, 8):
            order = [*engines, "torch-eager-fp32"]
            if r % 2:
                order.reverse()  # alternate who goes first
            for name in order:
                if name == "torch-eager-fp32":
                    ttft, tps = time_torch_greedy(ck.model, prompt, ck.tasks.id_of("colour"), batch, args.new_tokens,
                                                  ck.pad_id)
                else:
                    m, task = engines[name]
                    if r == 0 and batch == 1:
                        time_generation(m, task, 1, args.prompt_tokens, 4)  # warm-up
                    ttft, tps = time_generation(m, task, batch, args.prompt_tokens, args.new_tokens)
                record(name, f"decode_tok_s_b{batch}", tps)
                if batch == 1:
                    record(name, "ttft_ms", 1000 * ttft)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    med = {n: {k: round(statistics.median(v), 2) for k, v in d.items()} for n, d in results.items()}
    ref = med["torch-eager-fp32"]
    for d in med.values():
        d["ratio_b1_vs_torch"] = round(d["decode_tok_s_b1"] / ref["decode_tok_s_b1"], 2)
        d["ratio_b8_vs_torch"] = round(d["decode_tok_s_b8"] / ref["decode_tok_s_b8"], 2)
    report = {"threads": args.threads, "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
              "rounds": args.rounds, "engines": med,
              "cold_start_int8": cold_start(bundle, "echo", args.threads, "int8" if not args.no_int8 else "fp32"),
              "cold_start_fp32": cold_start(bundle, "echo", args.threads, "fp32")}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
