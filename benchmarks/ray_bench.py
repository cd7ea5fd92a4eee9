"""Ray Data batch job vs the local batch job, and 2 data-parallel ranks vs 1, interleaved.

    python benchmarks/ray_bench.py --work /tmp/ray-bench --rows 400 --rounds 3
    python benchmarks/ray_bench.py --work /tmp/ray-bench-tiny --tiny --rows 40 --rounds 1 --ddp-steps 2 4

Batch job: each round runs, in this order, the local job (``run_jsonl``, one EdgeModel with
2 threads), Ray with 1 actor x 1 thread and Ray with 2 actors x 1 thread on the same JSONL
rows (the three tasks of alter_edge.testing.TINY_ROWS, repeated to --rows), on a local Ray cluster with
one CPU per core. Each timing includes loading the model(s): what a user waits for. Prints
rows/s per round, medians and the ratios to the local job; the goal is Ray 2x1 >= 0.9x local.
Every Ray output is checked byte-identical to the local one.

Training: 1 rank (2 threads) and 2 gloo ranks (1 thread each) train the same global batches;
a rank's step time is (wall of N2 steps - wall of N1 steps) / (N2 - N1), so loading and the
prefix cache (built once, then read from disk) cancel out. Prints the step-time ratio.

Without --tiny it builds (once, under --work) a random-adapter LoRA checkpoint on the built-in
SmolLM2-135M and its bundle, as benchmarks/runtime_bench.py does. Run it on a quiet machine:
the host's speed drifts, so only ratios from one run mean much.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build(work: Path, tiny: bool) -> tuple[Path, Path, str]:
    """(checkpoint, bundle, base model reference)."""
    from alter_edge.base_model import resolve_base_model
    from alter_edge.testing import random_adapter_bundle, tiny_bundle

    if not tiny:
        ckpt, bundle = random_adapter_bundle(work, "smollm2-135m", int8=False)
        return ckpt, bundle, str(resolve_base_model("smollm2-135m"))
    base, ckpt, bundle = tiny_bundle(work, init_range=0.2)
    return ckpt, bundle, str(base)


def write_rows(path: Path, n: int) -> Path:
    from alter_edge.testing import TINY_ROWS

    rows = [{"id": i, "task": r["task"], "input": r["input"]} for i, r in
            zip(range(n), (TINY_ROWS[i % len(TINY_ROWS)] for i in range(n)), strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def bench_batch(bundle: Path, inp: Path, work: Path, rounds: int, max_new_tokens: int) -> dict:
    import ray

    from alter_edge.runtime import EdgeModel
    from alter_edge.runtime.batch import BatchOptions, run_jsonl
    from alter_edge.runtime.ray import RayOptions, run_file

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    opts = BatchOptions(batch_size=8, max_new_tokens=max_new_tokens)
    n = sum(1 for _ in open(inp))
    engines = {"local 2 threads": None, "ray 1 actor x 1": RayOptions(actors=1),
               "ray 2 actors x 1": RayOptions(actors=2)}
    rates: dict[str, list[float]] = {k: [] for k in engines}
    for r in range(rounds):
        for name, ropts in engines.items():
            out = work / f"out-{name.replace(' ', '_')}.jsonl"
            t0 = time.perf_counter()
            if ropts is None:
                run_jsonl(EdgeModel.load(bundle, threads=2, spinning=False), inp, out, opts, progress=False)
            else:
                run_file(bundle, inp, out, opts, ropts, progress=False)
            rates[name].append(n / (time.perf_counter() - t0))
            print(f"round {r + 1} {name:>18}: {rates[name][-1]:8.2f} rows/s", flush=True)
        want = (work / "out-local_2_threads.jsonl").read_bytes()
        for name in list(engines)[1:]:
            if (work / f"out-{name.replace(' ', '_')}.jsonl").read_bytes() != want:
                raise SystemExit(f"{name}: output differs from the local job's")
    ray.shutdown()
    med = {k: statistics.median(v) for k, v in rates.items()}
    local = med["local 2 threads"]
    return {"rows": n, "rows_per_s": rates, "median": med,
            "ratio_to_local": {k: v / local for k, v in med.items()}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, world: int, port: int, data, base: str, steps: list[int], work: str, q) -> None:
    import torch

    from alter_edge.config import TrainConfig
    from alter_edge.training.distributed import Collective, TorchDistributed
    from alter_edge.training.trainer import run_training

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    coll = TorchDistributed(rank, world, f"tcp://127.0.0.1:{port}") if world > 1 else Collective()
    walls = []
    for s in [steps[0], *steps]:  # the first run warms the caches (base model, imports): not timed
        cfg = TrainConfig(base_model=base, stage1_steps=s, stage2_steps=0, stages=1, batch_size=16,
                          eval_max_rows=1, eval_max_new_tokens=1, compute_dtype="float32",
                          mta={"num_top_layers": 4, "adapter_kind": "lora"})
        coll.barrier()
        t0 = time.perf_counter()
        run_training(data, Path(work) / f"w{world}-s{s}-{time.time_ns()}", cfg, progress=False, collective=coll)
        walls.append(time.perf_counter() - t0)
    if rank == 0:
        q.put((walls[2] - walls[1]) / (steps[1] - steps[0]))
    if world > 1:
        coll.close()


def bench_ddp(base: str, data, steps: list[int], rounds: int, work: Path) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    times: dict[int, list[float]] = {1: [], 2: []}
    for r in range(rounds):
        for world in (1, 2):
            q = ctx.SimpleQueue()
            mp.spawn(_ddp_rank, args=(world, _free_port(), data, base, steps, str(work), q), nprocs=world)
            times[world].append(q.get())
            print(f"round {r + 1} ddp {world} rank(s): {times[world][-1]:.3f} s/step", flush=True)
    med = {w: statistics.median(v) for w, v in times.items()}
    return {"step_s": times, "median_step_s": med, "ratio_2_vs_1": med[2] / med[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "alter-edge-ray-bench")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke test, not a benchmark)")
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--data", default=None, help="training JSONL for the DDP part (default: the built-in mix; "
                                                  "--tiny: the tests' three tasks)")
    ap.add_argument("--ddp-steps", type=int, nargs=2, default=[4, 12], metavar=("N1", "N2"))
    ap.add_argument("--skip", choices=["batch", "ddp"], default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    _, bundle, base = build(args.work, args.tiny)
    res: dict = {"cpus": os.cpu_count(), "tiny": args.tiny}
    if args.skip != "batch":
        res["batch"] = bench_batch(bundle, write_rows(args.work / "rows.jsonl", args.rows), args.work,
                                   args.rounds, args.max_new_tokens)
        for k, v in res["batch"]["median"].items():
            print(f"median {k:>18}: {v:8.2f} rows/s  ({res['batch']['ratio_to_local'][k]:.2f}x local)")
    if args.skip != "ddp":
        data = args.data
        if data is None and args.tiny:
            from alter_edge.data import write_jsonl
            from alter_edge.testing import TINY_ROWS

            data = args.work / "train.jsonl"
            write_jsonl(data, TINY_ROWS)
        res["ddp"] = bench_ddp(base, data, args.ddp_steps, args.rounds, args.work)
        print(f"ddp step time, 2 ranks / 1 rank: {res['ddp']['ratio_2_vs_1']:.2f}x "
              f"({res['ddp']['median_step_s'][2]:.3f} vs {res['ddp']['median_step_s'][1]:.3f} s)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
