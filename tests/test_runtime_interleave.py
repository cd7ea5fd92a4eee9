"""Interleaved prefill (SlotPool ``prefill_tokens``): prompts fed in bounded chunks between
decode steps, each chunk a batch-1 step after the row's fed tokens, give every row exactly the
greedy tokens it gets alone, unbatched and uncached, on every graph kind (multi-task with mixed
tasks, per-task, merged), with and without the per-task prefix cache, with refill and cancels."""

from __future__ import annotations

import pytest

from alter_edge.runtime import EdgeModel
from alter_edge.runtime.generate import SamplingParams, SlotPool, decode
from alter_edge.runtime.prefix import PrefixCache
from alter_edge.testing import TINY_ROWS

HEADS = {"colour": "count x x x x red", "echo": "swap cat dog swap", "parity": "is red a colour is"}


def _prompts(m, rows):
    return ([m.encode(f"{HEADS[r['task']]} {r['input']}", r["task"])[0] for r in rows],
            [m.tasks.id_of(r["task"]) for r in rows])


def _params(n):
    return [SamplingParams(max_new_tokens=2 + (5 * i) % 11, ignore_eos=True) for i in range(n)]


def _run(runner, m, prompts, tids, params, slots, prefill_tokens):
    out: list[list[int]] = [[] for _ in prompts]
    for i, tok in decode(runner, prompts, tids, m.bundle.eos_id, m.bundle.pad_id, params, slots=slots,
                         prefill_tokens=prefill_tokens):
        out[i].append(tok)
    return out


def _alone(runner, m, prompts, tids, params):
    return [_run(runner, m, [p], [t], [q], None, None)[0] for p, t, q in zip(prompts, tids, params, strict=True)]


@pytest.fixture(scope="module")
def off(runtime_bundle):
    return EdgeModel.load(runtime_bundle, threads=1, prefix_cache=False)


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("chunk,slots", [(1, 3), (5, 3), (7, 8), (1000, 4)])
def test_multitask_mixed_tasks_equal_alone(runtime_bundle, off, cached, chunk, slots):
    m = EdgeModel.load(runtime_bundle, threads=1, prefix_cache=cached)
    names = ["echo", "colour", "parity"]
    runner = m.runner_for(names)
    rows = TINY_ROWS[:14]
    prompts, tids = _prompts(m, rows)
    params = _params(len(prompts))
    want = _alone(off.runner_for(names), off, prompts, tids, params)
    assert len({tuple(w) for w in want}) > len(want) // 2
    if cached:
        runner.prefixes = PrefixCache({m.tasks.id_of(t): m.tokenizer.encode(h, add_special_tokens=False).ids
                                       for t, h in HEADS.items()}, learn=False)
    assert _run(runner, m, prompts, tids, params, slots, chunk) == want
    if cached:
        assert runner.prefixes.stats.hits == len(prompts)


@pytest.mark.parametrize("kind", ["task", "merged"])
def test_per_task_and_merged_graphs_equal_alone(kind, runtime_bundle, merged_bundle):
    bundle = runtime_bundle if kind == "task" else merged_bundle
    on = EdgeModel.load(bundle, threads=1, tasks=["echo"])
    off = EdgeModel.load(bundle, threads=1, tasks=["echo"], prefix_cache=False)
    runner = on.runner_for(["echo"])
    assert not runner.takes_task_ids
    assert {g.mode for g in on.bundle.graphs if g.task == "echo"} == {kind}
    rows = [r for r in TINY_ROWS if r["task"] == "echo"][:9]
    prompts, tids = _prompts(on, rows)
    params = _params(len(prompts))
    want = _alone(off.runner_for(["echo"]), off, prompts, tids, params)
    for chunk in (2, 6):
        assert _run(off.runner_for(["echo"]), off, prompts, tids, params, 3, chunk) == want
    runner.prefixes = PrefixCache({on.tasks.id_of("echo"): on.tokenizer.encode(HEADS["echo"],
                                                                                add_special_tokens=False).ids},
                                  learn=False)
    assert _run(runner, on, prompts, tids, params, 3, 3) == want
    assert runner.prefixes.stats.hits == len(prompts)


def test_rows_arriving_and_cancelled_mid_prompt(runtime_bundle, off):
    """A server-like pool: rows added while others decode, one cancelled while its prompt is
    part fed (its slot is reused), the cache grown while a prompt is part fed; decode tokens
    never wait for a whole prompt (each step feeds at most ``prefill_tokens`` prompt tokens)."""
    names = ["echo", "colour", "parity"]
    runner = off.runner_for(names)
    prompts, tids = _prompts(off, TINY_ROWS[:9])
    params = _params(len(prompts))
    want = _alone(runner, off, prompts, tids, params)
    fed = []
    step = runner.step

    def counting(ids, *a, **k):
        if ids.shape[1] > 1 or ids.shape[0] == 1:
            fed.append(ids.shape[1])
        return step(ids, *a, **k)

    runner.step = counting
    try:
        pool = SlotPool(runner, off.bundle.eos_id, off.bundle.pad_id, 4, 64, prefill_tokens=3)
        got: dict[int, list[int]] = {}
        pool.add(0, prompts[0], tids[0], params[0])
        pool.add("gone", prompts[1], tids[1], params[1])
        n = 1
        while pool.busy or n < len(prompts):
            for k, tok in pool.step():
                got.setdefault(k, []).append(tok)
            if "gone" in pool.partial:
                pool.cancel("gone")
            if n < len(prompts) and pool.queued == 0:  # one arrival a step
                pool.add(n, prompts[n], tids[n], params[n])
                n += 1
    finally:
        runner.step = step
    assert "gone" not in got
    assert [got[i] for i in range(len(prompts))] == want
    assert max(fed) <= 3  # no step fed more than the budget of prompt tokens
    assert pool.cache is None and not pool.partial
