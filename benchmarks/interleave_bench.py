"""Prompts interleaved with decode steps (SlotPool ``prefill_tokens``) against prompts in steps
of their own, at the step level: a closed loop of ``--clients`` rows in one SlotPool (a row that
finishes is replaced by the next prompt at once, as a client sending its next request), the
arms interleaved A B A B over ``--rounds``, medians printed.

    HF_HUB_OFFLINE=1 python benchmarks/interleave_bench.py --bundle runs/quickstart/bundle \\
        --clients 8 --requests 24 --max-tokens 32 --arms off 32 64 --threads 2

Per arm: generated tokens/s over the run (prompts included), time to first token p50/p99
(from a row's arrival in the pool; ``--vary``: requests of different lengths), and the gap between two tokens of one row p50/p99 (what a
running row waits while prompts are fed). Arm ``off``: prompts enter in steps of their own (the
default before); a number: at most that many prompt tokens a step; ``ARM@N``: that arm with a
pool of N slots (else ``--batch``, default: clients); ``64s0``: SlotPool ``decode_share`` 0 (every
step decodes; default 0.5). Also printed: process CPU ms per generated token (onnxruntime's
threads do not spin here), steadier than wall time on a shared machine. Prompts: the built-in mix of the bundle's tasks, tasks interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

from alter_edge.runtime import EdgeModel
from alter_edge.runtime.generate import SamplingParams, SlotPool


def prompts(m: EdgeModel, n: int) -> list[tuple[list[int], int]]:
    from alter_edge.default_mix import build_default_mix

    by: dict[str, list] = {}
    for r in build_default_mix():
        if r.task in m.tasks.names:
            by.setdefault(r.task, []).append(r)
    out = []
    for i in range(max(len(v) for v in by.values())):
        for rows in by.values():
            if i < len(rows):
                try:
                    out.append((m.prompt_ids(rows[i].input, rows[i].task)[0], m.tasks.id_of(rows[i].task)))
                except Exception:  # noqa: BLE001 -- an over-long input is left out
                    continue
    return out[:n]


def q(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def run(m: EdgeModel, work, clients: int, batch: int, max_tokens: int, prefill: int | None,
        share: float | None = None, vary: bool = False) -> dict:
    runner = m.runner_for(m.tasks.names)
    half = max(1, max_tokens // 2)
    budgets = [half + (7 * i) % (max_tokens - half + 1) if vary else max_tokens for i in range(len(work))]
    longest = max(len(p) for p, _ in work) + max_tokens
    pool = SlotPool(runner, m.bundle.eos_id, m.bundle.pad_id, batch, longest, prefill_tokens=prefill)
    if share is not None:
        pool.decode_share = share
    arrived, last, ttft, gaps = {}, {}, [], []
    nxt = tokens = 0
    t0, c0 = time.perf_counter(), time.process_time()

    def add():
        nonlocal nxt
        p, t = work[nxt]
        pool.add(nxt, p, t, SamplingParams(max_new_tokens=budgets[nxt], ignore_eos=True))
        arrived[nxt] = time.perf_counter()
        nxt += 1

    while nxt < min(clients, len(work)):
        add()
    while pool.busy:
        for k, tok in pool.step():
            now = time.perf_counter()
            tokens += tok is not None
            if k not in last:
                ttft.append(now - arrived[k])
            else:
                gaps.append(now - last[k])
            last[k] = now
            if k not in pool.slot_of:  # finished: the client sends its next request
                if nxt < len(work):
                    add()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"tok_s": tokens / wall, "cpu_ms_tok": 1e3 * cpu / tokens, "ttft50": q(ttft, .5), "ttft99": q(ttft, .99),
            "gap50": q(gaps, .5), "gap99": q(gaps, .99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--vary", action="store_true",
                    help="requests ask max_tokens/2..max_tokens tokens (clients drift apart, as in a real load)")
    ap.add_argument("--arms", nargs="+", default=["off", "32", "64"])
    args = ap.parse_args()
    m = EdgeModel.load(args.bundle, threads=args.threads, precision=args.precision, spinning=False)
    work = prompts(m, args.requests)
    print(f"{len(work)} prompts, {statistics.median(len(p) for p, _ in work):.0f} tokens median", flush=True)
    run(m, work[:4], 4, 4, 4, None)  # warm-up: sessions, prefix KV
    res: dict[str, list[dict]] = {a: [] for a in args.arms}
    for r in range(args.rounds):
        for a in (args.arms if r % 2 == 0 else args.arms[::-1]):
            arm, _, slots = a.partition("@")
            arm, _, share = arm.partition("s")
            x = run(m, work, args.clients, int(slots or args.batch or args.clients), args.max_tokens,
                    None if arm == "off" else int(arm), float(share) if share else None, args.vary)
            res[a].append(x)
            print(f"  round {r + 1} {a:>5}: " + "  ".join(f"{k} {v:.3f}" for k, v in x.items()), flush=True)
    base = statistics.median(x["tok_s"] for x in res[args.arms[0]])
    for a, xs in res.items():
        med = {k: statistics.median(x[k] for x in xs) for k in xs[0]}
        print(f"{a:>5}: " + "  ".join(f"{k} {v:.3f}" for k, v in med.items()) + f"  ratio {med['tok_s'] / base:.2f}x")


if __name__ == "__main__":
    main()
