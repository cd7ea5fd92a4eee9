"""Continuous refill (decode with fewer slots than rows) and label scoring batched over labels:
every row gets exactly what it gets alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alter_edge.errors import ConfigError
from alter_edge.runtime.batch import BatchOptions, plan_batches, read_rows, run_jsonl
from alter_edge.runtime.generate import SamplingParams, decode
from alter_edge.runtime.session import KVCache
from alter_edge.testing import TINY_ROWS

ROWS = TINY_ROWS[:24]  # colour, echo, parity interleaved


def _prompts(m, rows=ROWS):
    return [m.encode(r["input"], r["task"])[0] for r in rows], [m.tasks.id_of(r["task"]) for r in rows]


def _budgets(n: int) -> list[SamplingParams]:
    """Very different output lengths: 1 to 14 tokens (and whatever ends at eos first)."""
    return [SamplingParams(max_new_tokens=1 + (5 * i) % 14) for i in range(n)]


def _run(runner, prompts, tids, m, params, slots, done=None):
    out: list[list[int]] = [[] for _ in prompts]
    for i, tok in decode(runner, prompts, tids, m.bundle.eos_id, m.bundle.pad_id, params, done, slots=slots):
        out[i].append(tok)
    return out


@pytest.fixture()
def refills(monkeypatch):
    """How many rows each refill copied into a running batch."""
    calls: list[int] = []
    write = KVCache.write_rows
    monkeypatch.setattr(KVCache, "write_rows",
                        lambda self, slots, src, rows, length: calls.append(len(slots)) or write(
                            self, slots, src, rows, length))
    return calls


@pytest.mark.parametrize("slots", [1, 2, 3, 5, None])
def test_refill_rows_equal_their_own_runs_mixed_tasks(edge_model, slots, refills):
    m = edge_model
    runner = m.runner_for(["colour", "echo"])  # the multi-task graph, task_ids per slot
    prompts, tids = _prompts(m)
    params = _budgets(len(prompts))
    alone = [_run(runner, [p], [t], m, [q], None)[0] for p, t, q in zip(prompts, tids, params, strict=True)]
    assert len({len(a) for a in alone}) > 5  # lengths vary a lot
    assert _run(runner, prompts, tids, m, params, slots) == alone
    if slots in (2, 3, 5):
        assert refills, "freed slots were refilled with waiting rows"


def test_refill_on_the_per_task_graph_and_through_generate(edge_model, runtime_bundle, refills):
    from alter_edge.runtime import EdgeModel

    own = EdgeModel.load(runtime_bundle, tasks=["echo"], threads=1)
    assert not own.runner_for(["echo"]).takes_task_ids  # echo's own graph
    texts = [r["input"] for r in TINY_ROWS if r["task"] == "echo"][:9]
    alone = [own.generate(t, task="echo", max_new_tokens=10) for t in texts]
    for bs in (1, 2, 4):
        got = own.generate(texts, task="echo", max_new_tokens=10, batch_size=bs)
        assert [(g.token_ids, g.text, g.finish_reason) for g in got] == \
               [(a.token_ids, a.text, a.finish_reason) for a in alone]
    assert refills
    # mixed tasks through the API: the multi-task graph with refill
    m = edge_model
    texts = [r["input"] for r in ROWS]
    tasks = [r["task"] for r in ROWS]
    alone = [m.generate(t, task=k, max_new_tokens=10).token_ids for t, k in zip(texts, tasks, strict=True)]
    refills.clear()
    assert [g.token_ids for g in m.generate(texts, tasks=tasks, max_new_tokens=10, batch_size=3)] == alone
    assert refills


def test_seeded_sampling_does_not_depend_on_the_slot_count(edge_model):
    m = edge_model
    texts = [r["input"] for r in ROWS[:10]]
    tasks = [r["task"] for r in ROWS[:10]]
    kw = dict(tasks=tasks, max_new_tokens=10, temperature=1.5, top_k=20, top_p=0.95)
    full = [g.token_ids for g in m.generate(texts, seed=7, **kw)]
    for bs in (1, 3, 4):
        assert [g.token_ids for g in m.generate(texts, seed=7, batch_size=bs, **kw)] == full
    assert [g.token_ids for g in m.generate(texts, seed=8, batch_size=3, **kw)] != full
    # a row's stream is its own (seed, row), not its slot's: per-row params, differing budgets
    runner = m.runner_for(tasks)
    prompts, tids = _prompts(m, ROWS[:10])
    params = [SamplingParams(max_new_tokens=1 + (5 * i) % 9, temperature=1.2, seed=3) for i in range(10)]
    ref = _run(runner, prompts, tids, m, params, None)
    assert _run(runner, prompts, tids, m, params, 2) == ref


def test_stop_strings_end_rows_whose_slots_are_refilled(edge_model):
    m = edge_model
    texts = [r["input"] for r in TINY_ROWS if r["task"] == "echo"][:8]
    free = m.generate(texts, task="echo", max_new_tokens=12)
    words = [w for g in free for w in g.text.split()]
    stop = max(set(words), key=words.count)  # a word several rows say
    alone = [m.generate(t, task="echo", max_new_tokens=12, stop=stop) for t in texts]
    assert any(a.finish_reason == "stop" for a in alone)
    got = m.generate(texts, task="echo", max_new_tokens=12, stop=stop, batch_size=3)
    assert [(g.text, g.token_ids, g.finish_reason) for g in got] == \
           [(a.text, a.token_ids, a.finish_reason) for a in alone]


def test_stream_ends_each_row_as_soon_as_it_finishes(edge_model):
    texts = [r["input"] for r in ROWS[:6]]
    tasks = [r["task"] for r in ROWS[:6]]
    events = list(edge_model.stream(texts, tasks=tasks, max_new_tokens=6, batch_size=2))
    ends = [k for k, ev in enumerate(events) if ev.finish_reason]
    assert sorted(events[k].row for k in ends) == list(range(6))  # one finish per row
    for k in ends:  # and no event of that row after it
        assert all(ev.row != events[k].row for ev in events[k + 1:])
    first_of_last = next(k for k, ev in enumerate(events) if ev.row == 5)
    assert ends[0] < first_of_last  # a row finished before the last row had a slot


def test_write_rows_copies_into_the_bound_buffers(edge_model):
    kv = edge_model.bundle.kv
    dst, src = KVCache(kv, 3, 8), KVCache(kv, 2, 5)
    for a in src.arrays:
        a[:] = np.random.default_rng(0).standard_normal(a.shape)
    dst.write_rows(np.array([2, 0]), src, np.array([0, 1]), 4)
    for v, d, s in zip(dst.values, dst.arrays, src.arrays, strict=True):
        got = v.numpy()  # what onnxruntime sees
        np.testing.assert_array_equal(got, d)
        np.testing.assert_array_equal(got[2, :, :4], s[0, :, :4])
        np.testing.assert_array_equal(got[0, :, :4], s[1, :, :4])
        assert not got[1].any() and not got[:, :, 4:].any()


def test_slot_and_batch_size_arguments(edge_model):
    m = edge_model
    runner = m.runner_for(["echo"])
    prompts, tids = _prompts(m, ROWS[:2])
    with pytest.raises(ConfigError, match="slots must be an integer >= 1"):
        _run(runner, prompts, tids, m, SamplingParams(4), 0)
    with pytest.raises(ConfigError, match="2 prompts need 2 task ids and params"):
        _run(runner, prompts, tids, m, [SamplingParams(4)], 1)
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="batch_size must be an integer >= 1 or None"):
            m.generate("swap cat dog", task="echo", batch_size=bad)
        with pytest.raises(ConfigError, match="batch_size must be an integer >= 1 or None"):
            m.stream("swap cat dog", task="echo", batch_size=bad)


def test_batch_job_refills_and_saves_progress_every_batch_size_rows(edge_model, tmp_path, refills):
    rows = [{"id": i, "task": r["task"], "input": r["input"]} for i, r in enumerate(TINY_ROWS[:40])]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = BatchOptions(batch_size=3, generate_labels=True, max_new_tokens=9)
    full = tmp_path / "full.jsonl"
    run_jsonl(edge_model, inp, full, opts, progress=False)
    assert refills, "the job refilled freed slots"
    recs = [json.loads(x) for x in full.read_text().splitlines()]
    for r, rec in zip(rows, recs, strict=True):
        g = edge_model.generate(r["input"], task=r["task"], max_new_tokens=9)
        assert (rec["output"], rec["finish_reason"]) == (g.text.strip(), g.finish_reason)
    out, partial = tmp_path / "out.jsonl", tmp_path / "out.jsonl.partial"

    def stop(b: int) -> None:
        if b == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_jsonl(edge_model, inp, out, opts, progress=False, on_batch=stop)
    planned = plan_batches(read_rows(edge_model, inp, opts)[0], opts.batch_size)
    saved = sum(len(b) for b in planned[:5])  # a chunk per planned batch, of its size
    assert len(partial.read_text().splitlines()) == 1 + saved
    s = run_jsonl(edge_model, inp, out, opts, resume=True, progress=False)
    assert s.resumed == saved
    assert out.read_bytes() == full.read_bytes()


# -- label scoring batched over labels ------------------------------------------------------
LABEL_SETS = [
    [[5, 1]],  # one label with a later token: the shared prompt cache
    [[5, 1], [6, 1], [7]],  # typical: 1-2 tokens
    [[5, 6, 7, 1], [6, 1], [8, 9, 1], [7]],  # lengths 1-4: short labels leave the batch early
    [[3 + (k % 20), 4 + (k % 7), 1] for k in range(30)],  # more labels than one batched step holds
]


@pytest.mark.parametrize("labels", LABEL_SETS)
def test_batched_label_scores_equal_label_after_label(edge_model, labels):
    from alter_edge.runtime.scoring import score_labels

    m = edge_model
    runner = m.runner_for(["colour"])
    prompts, _ = _prompts(m, [r for r in TINY_ROWS if r["task"] == "colour"][:8])
    tids = [m.tasks.id_of("colour")] * len(prompts)
    for B in (1, 3, 8):
        old = score_labels(runner, prompts[:B], tids[:B], labels, m.bundle.pad_id, batched=False)
        new = score_labels(runner, prompts[:B], tids[:B], labels, m.bundle.pad_id)
        np.testing.assert_allclose(new, old, atol=1e-5, rtol=0)
        alone = [score_labels(runner, [p], tids[:1], labels, m.bundle.pad_id)[0] for p in prompts[:B]]
        np.testing.assert_allclose(new, alone, atol=1e-5, rtol=0)


def test_classify_scores_all_labels_in_one_step(edge_model, monkeypatch):
    from alter_edge.runtime.session import GraphRunner

    m = edge_model
    texts = [r["input"] for r in TINY_ROWS if r["task"] == "colour"][:5]
    batches: list[int] = []
    step = GraphRunner.step
    monkeypatch.setattr(GraphRunner, "step", lambda self, ids, lengths, tids, cache, **kw: batches.append(
        ids.shape[0]) or step(self, ids, lengths, tids, cache, **kw))
    # prompts that start from a cached prefix run one row per step (tests/test_runtime_prefix.py)
    monkeypatch.setattr(m.runner_for(["colour"]), "prefixes", None)
    m.classify(texts, "colour")
    labels = m.label_ids("colour")
    assert len(labels) == 2 and all(len(lab) == 2 for lab in labels)  # yes/no + eos
    assert batches == [5, 10]  # the prompts, then both labels' eos steps together
