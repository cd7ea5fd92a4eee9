"""The runtime against the PyTorch reference (training/evaluate.py) on a tiny random bundle."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from alter_edge.runtime import EdgeModel
from alter_edge.testing import TINY_ROWS

MAX_NEW = 12


def _texts(task: str, n: int = 4) -> list[str]:
    return [r["input"] for r in TINY_ROWS if r["task"] == task][:n]


def _torch_greedy(ckpt, model: EdgeModel, texts, tasks, max_new=MAX_NEW):
    from alter_edge.training.evaluate import greedy_generate

    prompts = [model.encode(t, k)[0] for t, k in zip(texts, tasks, strict=True)]
    return greedy_generate(ckpt.model, prompts, [model.tasks.id_of(k) for k in tasks],
                           ckpt.eos_id, ckpt.pad_id, max_new)


@pytest.mark.parametrize("task", ["colour", "echo", "parity"])
def test_greedy_matches_pytorch_per_task(edge_model, runtime_ckpt, task):
    texts = _texts(task)
    ref = _torch_greedy(runtime_ckpt, edge_model, texts, [task] * len(texts))
    got = edge_model.generate(texts, task=task, max_new_tokens=MAX_NEW)
    assert [g.token_ids for g in got] == ref
    assert any(len(r) > 0 for r in ref)  # the comparison is not vacuous
    for g, r in zip(got, ref, strict=True):
        assert g.finish_reason == ("length" if len(r) == MAX_NEW else "eos")
        assert g.text == edge_model.tokenizer.decode(r, skip_special_tokens=True).strip()


def test_one_graph_unless_asked_own_graph_when_opened(runtime_bundle):
    from alter_edge.runtime import EdgeModel

    default = EdgeModel.load(runtime_bundle, threads=1)  # the multi-task graph serves everything
    for tasks in (["echo"], ["colour"], ["echo", "colour"]):
        assert default.runner_for(tasks).path.name == "model.fp32.onnx"
    assert list(default._runners) == ["model.fp32.onnx"]  # no second graph was opened
    own = EdgeModel.load(runtime_bundle, threads=1, tasks=["echo"])  # asked for: echo's own graph
    assert own.runner_for(["echo"]).path.name == "task-echo.fp32.onnx"
    assert not own.runner_for(["echo"]).takes_task_ids
    assert list(own._runners) == ["task-echo.fp32.onnx"]
    assert own.runner_for(["echo", "colour"]).takes_task_ids  # a mixed request opens the multi-task graph


def test_mixed_task_batch_matches_pytorch(edge_model, runtime_ckpt, monkeypatch):
    from alter_edge.runtime.session import KVCache

    texts = _texts("colour", 4) + _texts("echo", 4) + _texts("parity", 4)
    tasks = ["colour"] * 4 + ["echo"] * 4 + ["parity"] * 4
    order = [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]  # interleave tasks inside the batch
    texts, tasks = [texts[i] for i in order], [tasks[i] for i in order]
    ref = _torch_greedy(runtime_ckpt, edge_model, texts, tasks)
    compactions = []
    select = KVCache.select_rows
    monkeypatch.setattr(KVCache, "select_rows",
                        lambda cache, rows: compactions.append(len(rows)) or select(cache, rows))
    got = edge_model.generate(texts, tasks=tasks, max_new_tokens=MAX_NEW)
    assert [g.token_ids for g in got] == ref
    assert len({len(r) for r in ref}) > 1  # rows end at different steps ...
    assert compactions, "... so finished rows were dropped from the batch"
    monkeypatch.undo()
    # and each row equals its own task's single-task run
    for i, (t, k) in enumerate(zip(texts, tasks, strict=True)):
        assert edge_model.generate(t, task=k, max_new_tokens=MAX_NEW).token_ids == ref[i]


def test_mixed_batch_without_multi_task_graph(runtime_bundle, runtime_ckpt, tmp_path):
    """A bundle of per-task graphs only splits a mixed request by task, same answers."""
    b = tmp_path / "b"
    shutil.copytree(runtime_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["graphs"] = [g for g in m["graphs"] if g["task"] is not None]
    (b / "model.fp32.onnx").unlink()
    (b / "manifest.json").write_text(json.dumps(m))
    model = EdgeModel.load(b, threads=1)
    texts = _texts("echo", 2)
    with pytest.raises(Exception, match="no graph for task 'colour'"):
        model.generate(_texts("colour", 1) + texts, tasks=["colour", "echo", "echo"])
    got = model.generate(texts, tasks=["echo", "echo"], max_new_tokens=MAX_NEW)
    assert [g.token_ids for g in got] == _torch_greedy(runtime_ckpt, model, texts, ["echo", "echo"])


@pytest.mark.parametrize("task", ["colour", "parity"])
def test_classify_matches_pytorch_label_scores(edge_model, runtime_ckpt, task):
    from alter_edge.training.evaluate import label_scores

    texts = _texts(task, 6)
    got = edge_model.classify(texts, task)
    labels = edge_model.tasks.get(task).labels
    for text, c in zip(texts, got, strict=True):
        prompt = edge_model.encode(text, task)[0]
        ref = label_scores(runtime_ckpt.model, prompt, edge_model.tasks.id_of(task),
                           edge_model.label_ids(task), runtime_ckpt.pad_id)
        assert c.label == labels[int(np.argmax(ref))]
        assert c.label in labels
        np.testing.assert_allclose([c.scores[lab] for lab in labels], ref, atol=1e-4)
        p = np.exp(np.array(ref) - max(ref))
        assert c.probability == pytest.approx(p.max() / p.sum(), abs=1e-4)


def test_classify_unknown_task_names_the_known_ones(edge_model):
    from alter_edge.errors import TaskError

    with pytest.raises(TaskError, match="unknown task 'nope'"):
        edge_model.classify(["x"], "nope")


def test_stream_equals_generate(edge_model):
    texts = _texts("echo", 2) + _texts("parity", 2)
    tasks = ["echo", "echo", "parity", "parity"]
    gens = edge_model.generate(texts, tasks=tasks, max_new_tokens=MAX_NEW)
    pieces = [""] * 4
    ids: list[list[int]] = [[] for _ in range(4)]
    finished = [None] * 4
    for ev in edge_model.stream(texts, tasks=tasks, max_new_tokens=MAX_NEW):
        assert finished[ev.row] is None, "no event after a row's finish"
        pieces[ev.row] += ev.text
        if ev.token_id is not None:
            ids[ev.row].append(ev.token_id)
        finished[ev.row] = ev.finish_reason
    assert pieces == [g.text for g in gens]
    assert ids == [g.token_ids for g in gens]
    assert finished == [g.finish_reason for g in gens]


def test_stop_strings_cut_the_text(edge_model):
    texts = _texts("echo", 8) + _texts("parity", 8)
    tasks = ["echo"] * 8 + ["parity"] * 8
    gens = edge_model.generate(texts, tasks=tasks, max_new_tokens=MAX_NEW)
    i = max(range(len(gens)), key=lambda k: len(gens[k].text.split()))
    text, task, full = texts[i], tasks[i], gens[i]
    words = full.text.split()
    assert len(words) >= 3
    stop = words[2]
    cut = edge_model.generate(text, task=task, max_new_tokens=MAX_NEW, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    streamed = "".join(ev.text for ev in edge_model.stream(text, task=task, max_new_tokens=MAX_NEW,
                                                          stop=[stop]))
    assert streamed == cut.text


def test_sampling_is_seeded(edge_model):
    texts = _texts("echo", 3)
    kw = dict(task="echo", max_new_tokens=MAX_NEW, temperature=1.5, top_k=20, top_p=0.95)
    a = [g.token_ids for g in edge_model.generate(texts, seed=1, **kw)]
    b = [g.token_ids for g in edge_model.generate(texts, seed=1, **kw)]
    c = [g.token_ids for g in edge_model.generate(texts, seed=2, **kw)]
    greedy = [g.token_ids for g in edge_model.generate(texts, task="echo", max_new_tokens=MAX_NEW)]
    assert a == b
    assert a != c
    assert a != greedy
    one = edge_model.generate(texts[1], seed=1, **kw)  # a row's draws do not depend on its batch
    assert len(one.token_ids) > 0
    top1 = edge_model.generate(texts, seed=3, **{**kw, "top_k": 1})  # top-k 1 is greedy
    assert [g.token_ids for g in top1] == greedy


def test_thread_safety(edge_model):
    jobs = [("g", _texts("echo", 2), "echo"), ("g", _texts("colour", 3), "colour"),
            ("c", _texts("colour", 4), "colour"), ("c", _texts("parity", 3), "parity"),
            ("g", _texts("parity", 2), "parity")] * 3

    def run(job):
        kind, texts, task = job
        if kind == "g":
            return [g.token_ids for g in edge_model.generate(texts, task=task, max_new_tokens=MAX_NEW)]
        return [(c.label, round(c.probability, 6)) for c in edge_model.classify(texts, task)]

    serial = [run(j) for j in jobs]
    results: dict[int, object] = {}

    def worker(k: int) -> None:
        for i in range(k, len(jobs), 4):
            results[i] = run(jobs[i])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(jobs))] == serial
