"""The per-task prefix cache (runtime.prefix, GraphRunner.prefill): a row that starts from its
task's cached prefix KV gets exactly what the whole prompt gets, on every graph kind, with mixed
tasks and refill, in label scoring, the batch job and the server's scheduler; a prefix computed
under the wrong task is caught by the same comparisons."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from alter_edge.runtime import EdgeModel
from alter_edge.runtime.generate import SamplingParams, decode
from alter_edge.runtime.prefix import PrefixCache, common_prefix, template_prefix_ids
from alter_edge.runtime.scoring import score_labels
from alter_edge.testing import TINY_ROWS

# each task's inputs start with words of their own: the instruction a real task's inputs carry
HEADS = {"colour": "count x x x x red", "echo": "swap cat dog swap", "parity": "is red a colour is"}
ROWS = TINY_ROWS[:18]


def _texts(rows=ROWS) -> list[str]:
    return [f"{HEADS[r['task']]} {r['input']}" for r in rows]


def _prompts(m: EdgeModel, rows=ROWS) -> tuple[list[list[int]], list[int]]:
    return ([m.encode(t, r["task"])[0] for t, r in zip(_texts(rows), rows, strict=True)],
            [m.tasks.id_of(r["task"]) for r in rows])


def _heads(m: EdgeModel, tasks=HEADS) -> dict[int, list[int]]:
    return {m.tasks.id_of(t): m.tokenizer.encode(HEADS[t], add_special_tokens=False).ids for t in tasks}


class WrongTask(PrefixCache):
    """A cache that computes each prefix under the next task's id: the bug the tests must catch."""

    def _compute(self, runner, task, ids):
        return super()._compute(runner, (task + 1) % 3, ids)


def _run(runner, m, prompts, tids, params, slots):
    out: list[list[int]] = [[] for _ in prompts]
    for i, tok in decode(runner, prompts, tids, m.bundle.eos_id, m.bundle.pad_id, params, slots=slots):
        out[i].append(tok)
    return out


def _budgets(n: int) -> list[SamplingParams]:
    return [SamplingParams(max_new_tokens=2 + (5 * i) % 11, ignore_eos=True) for i in range(n)]


@pytest.fixture(scope="module")
def off(runtime_bundle):
    return EdgeModel.load(runtime_bundle, threads=1, preload=True, prefix_cache=False)


@pytest.fixture()
def on(runtime_bundle):
    return EdgeModel.load(runtime_bundle, threads=1, preload=True)


def test_off_means_no_cache(off):
    assert off.runner_for(["echo", "colour"]).prefixes is None
    assert off.runner_for(["echo"]).prefixes is None


@pytest.mark.parametrize("slots", [1, 3, None])
def test_multitask_graph_mixed_tasks_with_refill_equals_uncached(on, off, slots):
    runner, ref = on.runner_for(["echo", "colour"]), off.runner_for(["echo", "colour"])
    assert runner.takes_task_ids
    prompts, tids = _prompts(on)
    heads = _heads(on)
    prompts.append(list(heads[tids[0]]))  # a prompt that is the cached prefix itself: its last token is fed
    tids.append(tids[0])
    params = _budgets(len(prompts))
    want = _run(ref, off, prompts, tids, params, slots)
    assert len({tuple(w) for w in want}) > len(want) // 2  # the outputs differ from row to row
    runner.prefixes = PrefixCache(heads, learn=False)
    assert _run(runner, on, prompts, tids, params, slots) == want
    assert runner.prefixes.stats.hits == len(prompts) and runner.prefixes.stats.computed == 3
    assert runner.prefixes.stats.tokens == sum(min(len(heads[t]), len(p) - 1) for p, t in zip(prompts, tids,
                                                                                               strict=True))
    # the same comparison catches a prefix computed under another task's mixture
    runner.prefixes = WrongTask(heads, learn=False)
    assert _run(runner, on, prompts, tids, params, slots) != want


def test_partial_and_missing_matches_use_what_matches(on, off):
    """Cached ids longer than what a prompt shares (a BPE merge across the boundary, a prompt cut
    in the middle): the prompt uses the common part only; a prompt sharing nothing runs whole."""
    runner, ref = on.runner_for(["echo", "colour"]), off.runner_for(["echo", "colour"])
    prompts, tids = _prompts(on)
    heads = _heads(on)
    long_ids = {t: [*ids, 3, 3, 3, 3] for t, ids in heads.items()}  # no prompt continues with these
    cache = runner.prefixes = PrefixCache(long_ids, learn=False)
    n, kv = cache.lookup(runner, tids[0], prompts[0])
    assert n == len(heads[tids[0]]) and kv[0].shape[2] == len(long_ids[tids[0]])
    stranger = on.encode("fish moon", "echo")[0]
    assert cache.lookup(runner, on.tasks.id_of("echo"), stranger) == (0, None)
    prompts.append(stranger)
    tids.append(on.tasks.id_of("echo"))
    params = _budgets(len(prompts))
    assert _run(runner, on, prompts, tids, params, 4) == _run(ref, off, prompts, tids, params, 4)


@pytest.mark.parametrize("kind", ["task", "merged"])
def test_per_task_and_merged_graphs_equal_uncached(kind, runtime_bundle, merged_bundle):
    bundle = runtime_bundle if kind == "task" else merged_bundle
    on = EdgeModel.load(bundle, threads=1, tasks=["echo"])
    off = EdgeModel.load(bundle, threads=1, tasks=["echo"], prefix_cache=False)
    runner, ref = on.runner_for(["echo"]), off.runner_for(["echo"])
    assert not runner.takes_task_ids
    assert {g.mode for g in on.bundle.graphs if g.task == "echo"} == {kind}
    rows = [r for r in TINY_ROWS if r["task"] == "echo"][:10]
    prompts, tids = _prompts(on, rows)
    params = _budgets(len(prompts))
    want = _run(ref, off, prompts, tids, params, 3)
    runner.prefixes = PrefixCache(_heads(on, ["echo"]), learn=False)
    assert _run(runner, on, prompts, tids, params, 3) == want
    assert runner.prefixes.stats.hits == len(prompts)
    # through the API: the template prefix ("{input}\nAnswer:" has none) and the learned one
    fresh = EdgeModel.load(bundle, threads=1, tasks=["echo"])
    texts = _texts(rows)
    got = [g.token_ids for g in fresh.generate(texts, task="echo", max_new_tokens=6, batch_size=3)]
    assert got == [g.token_ids for g in off.generate(texts, task="echo", max_new_tokens=6, batch_size=3)]
    cache = fresh.runner_for(["echo"]).prefixes
    head = tuple(_heads(on, ["echo"])[on.tasks.id_of("echo")])
    assert cache.ids(on.tasks.id_of("echo"))[:len(head)] == head  # learned: the head, maybe the next word too
    assert cache.stats.hits >= len(texts) - 2 and cache.stats.tokens > 0


def test_label_scores_equal_uncached(on, off):
    runner = on.runner_for(["colour"])
    rows = [r for r in TINY_ROWS if r["task"] == "colour"][:7]
    prompts, tids = _prompts(on, rows)
    labels = on.label_ids("colour")
    pad = on.bundle.pad_id
    want = score_labels(off.runner_for(["colour"]), prompts, tids, labels, pad)
    runner.prefixes = PrefixCache(_heads(on), learn=False)
    got = score_labels(runner, prompts, tids, labels, pad)
    assert runner.prefixes.stats.hits == len(prompts)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    runner.prefixes = WrongTask(_heads(on), learn=False)
    assert np.abs(score_labels(runner, prompts, tids, labels, pad) - want).max() > 1e-3
    # the API learns the prefix from the prompts themselves
    texts = _texts(rows)
    fresh = EdgeModel.load(on.bundle.root, threads=1)
    got = fresh.classify(texts, task="colour")
    ref = off.classify(texts, task="colour")
    assert [c.label for c in got] == [c.label for c in ref]
    for a, b in zip(got, ref, strict=True):
        assert max(abs(a.scores[k] - b.scores[k]) for k in a.scores) < 1e-5
    assert fresh.runner_for(["colour"]).prefixes.stats.tokens > 0


def test_learning_needs_min_learned_shared_tokens(on):
    runner = on.runner_for(["echo", "colour"])
    cache = PrefixCache({0: [], 1: []}, min_learned=4)
    assert cache.lookup(runner, 0, [5, 6, 7, 8, 9]) == (0, None)  # first prompt: a candidate only
    assert cache.lookup(runner, 0, [5, 6, 7, 1, 1]) == (0, None)  # 3 shared: not enough
    n, kv = cache.lookup(runner, 0, [5, 6, 7, 1, 2, 2])  # 4 shared with the one before
    assert n == 4 and cache.ids(0) == (5, 6, 7, 1) and kv[0].shape[2] == 4
    assert cache.ids(1) == ()  # per task
    assert cache.lookup(runner, 0, [5, 6, 7, 1, 9])[0] == 4  # any common prefix of the cached ids ...
    assert cache.lookup(runner, 0, [5, 6, 7, 9, 9]) == (0, None)  # ... of at least min_tokens
    assert cache.lookup(runner, 0, [5, 6, 7, 1]) == (0, None)  # the last token is always fed
    assert cache.lookup(runner, 2, [5, 6, 7, 1, 2]) == (0, None)  # a task this graph does not serve


def test_batch_job_and_scheduler_use_it(runtime_bundle, off, tmp_path):
    on = EdgeModel.load(runtime_bundle, threads=1)
    from alter_edge.runtime.batch import BatchOptions, run_jsonl

    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"id": i, "task": r["task"], "input": t}) + "\n"
                           for i, (r, t) in enumerate(zip(ROWS, _texts(), strict=True))))
    opts = BatchOptions(batch_size=3, max_new_tokens=6)
    run_jsonl(on, src, tmp_path / "on.jsonl", opts, progress=False)
    run_jsonl(off, src, tmp_path / "off.jsonl", opts, progress=False)
    assert (tmp_path / "on.jsonl").read_bytes() == (tmp_path / "off.jsonl").read_bytes()
    stats = on.runner_for(on.tasks.names).prefixes.stats
    assert stats.hits > len(ROWS) // 2 and stats.tokens > 0
    # the server's scheduler: one pool over the multi-task graph, mixed tasks
    pytest.importorskip("uvicorn")
    from alter_edge.runtime.serve.scheduler import Job, Scheduler

    served = EdgeModel.load(runtime_bundle, threads=1)
    sched = Scheduler(served, max_batch=2, max_queue=64, max_tokens=6)
    got: dict[int, list[int]] = {}
    finished: set[int] = set()

    def deliver(job, events):
        for ev in events:
            if ev.token_id is not None:
                got.setdefault(job.sink, []).append(ev.token_id)
            if ev.finish_reason:
                finished.add(job.sink)

    texts = _texts()
    params = SamplingParams(6, ignore_eos=True)
    for i, (r, t) in enumerate(zip(ROWS, texts, strict=True)):
        sched.submit(Job(r["task"], served.tasks.id_of(r["task"]), deliver, time.monotonic() + 600,
                         prompt=served.encode(t, r["task"])[0], params=params, sink=i))
    sched.start()
    try:
        deadline = time.monotonic() + 60
        while len(finished) < len(ROWS):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        sched.stop()
    prompts, tids = _prompts(off)
    want = _run(off.runner_for(off.tasks.names), off, prompts, tids, params, None)
    assert [got.get(i, []) for i in range(len(ROWS))] == want
    assert sched.runner.prefixes.stats.tokens > 0


def test_template_prefix_ids_word_level(on):
    tok = on.tokenizer
    assert template_prefix_ids(tok, "{input}\nAnswer:") == []
    ids = template_prefix_ids(tok, "count x x {input}\nAnswer:")
    assert ids == tok.encode("count x x", add_special_tokens=False).ids
    assert template_prefix_ids(tok, "{{x}} count {input}") == tok.encode("{x} count", add_special_tokens=False).ids


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Classify the review: a fine film\nAnswer: positive", "Question:who wrote it? Answer:",
              "Question: who is it", "Review:great", "Review: great fun", "hello world"] * 50
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


@pytest.mark.parametrize("template", ["Classify the review: {input}\nAnswer:", "Question:{input} Answer:",
                                      "Review:{input}", "Question: {input}", "{input}\nAnswer:"])
def test_template_prefix_is_a_token_prefix_of_every_prompt(template):
    """BPE merges across the {input} boundary: the cached ids are a token prefix of the real
    prompt's tokenization whatever the input starts with."""
    tok = _bpe_tokenizer()
    ids = template_prefix_ids(tok, template)
    head = template.split("{input}")[0]
    if head:
        assert ids, "a template with text before {input} has a constant prefix"
    inputs = ["who wrote it?", "great", " great fun", "a fine film", "é!", "\nAnswer", "x" * 30, "1"]
    for text in inputs:
        prompt = tok.encode(template.format(input=text), add_special_tokens=False).ids
        assert common_prefix(ids, prompt) == len(ids), (template, text)
    # the naive prefix (the text before {input} tokenized alone) is not always one
    if template == "Question: {input}":
        naive = tok.encode(head, add_special_tokens=False).ids
        prompt = tok.encode(template.format(input="who is it"), add_special_tokens=False).ids
        assert common_prefix(naive, prompt) < len(naive)  # its trailing " " merges into " who"
        assert ids == naive[:-1]


def test_slots_on_demand(edge_model):
    """The pool's KV cache has rows for the slots in use (grown as rows enter, by doubling up to
    ``size``), none when nothing runs or waits; every row still gets what it gets alone."""
    from alter_edge.runtime.generate import SlotPool

    m = edge_model
    runner = m.runner_for(m.tasks.names)
    prompts, tids = _prompts(m)
    alone = [_run(runner, m, [p], [t], [SamplingParams(5, ignore_eos=True)], None)[0]
             for p, t in zip(prompts[:7], tids[:7], strict=True)]
    pool = SlotPool(runner, m.bundle.eos_id, m.bundle.pad_id, 8, 64)
    assert pool.size == 8 and pool.allocated == 0 and pool.cache is None
    got: dict[int, list[int]] = {}
    sizes = []

    def add(i):
        pool.add(i, prompts[i], tids[i], SamplingParams(5, ignore_eos=True))

    add(0)
    for k, tok in pool.step():
        got.setdefault(k, []).append(tok)
    assert pool.allocated == 1 and pool.cache.batch == 1  # one row running: one row of cache
    for i in (1, 2):
        add(i)
    for _ in range(2):
        for k, tok in pool.step():
            got.setdefault(k, []).append(tok)
        sizes.append(pool.allocated)
    assert sizes[0] == 3  # grown for the two that entered (at least double)
    for i in range(3, 7):
        add(i)
    while pool.busy:
        for k, tok in pool.step():
            got.setdefault(k, []).append(tok)
        sizes.append(pool.allocated)
    assert max(sizes) == 7  # 3 running + 4 entering; never the 8 slots of `size`
    assert pool.allocated == 0 and pool.cache is None  # idle: no KV memory
    assert [got[i] for i in range(7)] == alone


def test_prefix_bench_smoke(tmp_path):
    """benchmarks/prefix_bench.py runs the real `alter-edge run` both ways and checks the records."""
    from pathlib import Path

    from alter_edge.testing import load_script

    bench = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "prefix_bench.py", "prefix_bench")
    res = bench.main(["--tiny", "--work", str(tmp_path), "--rounds", "1", "--rows", "12", "--threads", "1"])
    assert res["rows"] == 12 and len(res["seconds"]["on"]) == len(res["seconds"]["off"]) == 1
    assert all(t["shared_prefix_tokens"] >= 3 for t in res["tasks"].values())
    assert res["ratio_on_off"] > 0


def test_batch_job_results_do_not_depend_on_history(runtime_bundle, tmp_path):
    """The job pins each task's prefix to what all of its input's prompts share, so a model that
    learned another prefix before writes the same bytes as a fresh one."""
    from alter_edge.runtime.batch import BatchOptions, run_jsonl

    used = EdgeModel.load(runtime_bundle, threads=1)
    colour = [r for r in TINY_ROWS if r["task"] == "colour"][:6]
    used.classify([f"count x x x x red green blue {r['input']}" for r in colour], task="colour")  # learns that
    tid = used.tasks.id_of("colour")
    runner = used.runner_for(["colour"])
    assert len(runner.prefixes.ids(tid)) >= 9
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"id": i, "task": r["task"], "input": t}) + "\n"
                           for i, (r, t) in enumerate(zip(ROWS, _texts(), strict=True))))
    opts = BatchOptions(batch_size=4, max_new_tokens=4)
    run_jsonl(used, src, tmp_path / "used.jsonl", opts, progress=False)
    run_jsonl(EdgeModel.load(runtime_bundle, threads=1), src, tmp_path / "fresh.jsonl", opts, progress=False)
    assert (tmp_path / "used.jsonl").read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()
    prompts = [used.encode(t, "colour")[0] for t, r in zip(_texts(), ROWS, strict=True) if r["task"] == "colour"]
    shared = min(common_prefix(prompts[0], p) for p in prompts)
    assert runner.prefixes.ids(tid) == tuple(prompts[0][:shared])  # pinned: the input's common prefix


def test_resume_refuses_another_prefix_cache_setting(runtime_bundle, off, tmp_path):
    """A job's progress file records a prefix cache turned off (scores may differ in the last
    digit with it): resuming with it on is refused, naming the setting."""
    from alter_edge.errors import DataError
    from alter_edge.runtime.batch import BatchOptions, run_jsonl

    class Stop(Exception):
        pass

    def stop(_):
        raise Stop

    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"id": i, "task": r["task"], "input": t}) + "\n"
                           for i, (r, t) in enumerate(zip(ROWS[:6], _texts(ROWS[:6]), strict=True))))
    out = tmp_path / "out.jsonl"
    opts = BatchOptions(batch_size=2, max_new_tokens=2)
    with pytest.raises(Stop):
        run_jsonl(off, src, out, opts, progress=False, on_batch=stop)
    with pytest.raises(DataError, match="prefix_cache False there, None now"):
        run_jsonl(EdgeModel.load(runtime_bundle, threads=1), src, out, opts, resume=True, progress=False)
    run_jsonl(off, src, out, opts, resume=True, progress=False)  # the same setting resumes
