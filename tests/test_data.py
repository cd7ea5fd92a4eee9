"""Data loading, task registry, split and metrics (torch-free)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from alter_edge.data import (
    Example,
    load_jsonl,
    spread_head,
    stratified_indices,
    stratified_split,
    write_jsonl,
)
from alter_edge.errors import DataError, TaskError
from alter_edge.metrics import exact_match, overall_score, rouge_l_f1
from alter_edge.tasks import TaskRegistry, TaskSpec
from alter_edge.testing import TINY_ROWS


def _write(tmp_path, lines: list[bytes]):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


@pytest.mark.parametrize(
    "line, message",
    [
        (b'{"task": "a", "input": "x"}', r"line 2: missing field\(s\) target"),
        (b"not json", "line 2: not valid JSON"),
        (b'{"task": "a", "input": "x", "target": "\xff\xfe"}', "line 2: not UTF-8"),
        (b'["a", "b"]', "line 2: expected a JSON object"),
        (b'{"task": "a", "input": "  ", "target": "y"}', "line 2: field 'input' is empty"),
        (b'{"task": "a", "input": 3, "target": "y"}', "line 2: field 'input' must be a string"),
    ],
)
def test_bad_lines_are_named(tmp_path, line, message):
    good = json.dumps({"task": "a", "input": "x", "target": "y"}).encode()
    with pytest.raises(DataError, match=message):
        load_jsonl(_write(tmp_path, [good, line, good]))


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="no data rows"):
        load_jsonl(_write(tmp_path, [b"", b"  "]))
    with pytest.raises(DataError, match="not found"):
        load_jsonl(tmp_path / "absent.jsonl")


def test_split_is_stratified_and_fixed(tmp_path):
    p = tmp_path / "d.jsonl"
    write_jsonl(p, TINY_ROWS)
    rows = load_jsonl(p)
    tr, dev = stratified_split(rows, 0.25, seed=1)
    assert len(tr) + len(dev) == len(rows)
    assert {r.task for r in dev} == {"parity", "colour", "echo"}
    assert all(sum(r.task == t for r in dev) == 6 for t in ("parity", "colour", "echo"))
    assert [r.line for r in dev] == [r.line for r in stratified_split(rows, 0.25, seed=1)[1]]
    assert [r.line for r in dev] != [r.line for r in stratified_split(rows, 0.25, seed=2)[1]]


def test_split_warns_about_dev_rows_repeated_in_train(tmp_path, caplog):
    p = tmp_path / "d.jsonl"
    write_jsonl(p, TINY_ROWS)
    rows = list({(r.task, r.input): r for r in load_jsonl(p)}.values())  # each input once
    with caplog.at_level("WARNING", logger="alter_edge.data"):
        stratified_split(rows, 0.25, seed=1)
    assert not caplog.records
    twice = rows + [Example(r.task, r.input, r.target, line=len(rows) + i + 1) for i, r in enumerate(rows)]
    with caplog.at_level("WARNING", logger="alter_edge.data"):
        tr, dev = stratified_split(twice, 0.25, seed=1)
    in_train = {(t.task, t.input) for t in tr}
    leaked = sum((r.task, r.input) in in_train for r in dev)
    assert leaked > 0 and f"{leaked} of {len(dev)} dev rows repeat a train row" in caplog.text


def test_registry_inference_roundtrip_and_errors(tmp_path):
    reg = TaskRegistry.infer(TINY_ROWS)
    assert reg.get("parity").labels == ("even", "odd")
    assert reg.get("echo").kind == "generate"
    reg.save(tmp_path / "tasks.json")
    assert TaskRegistry.load(tmp_path / "tasks.json") == reg
    with pytest.raises(TaskError, match="unknown task 'nope'; known tasks: colour, echo, parity"):
        reg.get("nope")
    assert [t.name for t in reg.resolve("all")] == reg.names
    assert [t.name for t in reg.resolve("parity,colour")] == ["colour", "parity"]
    with pytest.raises(TaskError, match="kind"):
        TaskSpec("x", 0, "rank")
    with pytest.raises(TaskError, match="ids must be"):
        TaskRegistry((TaskSpec("a", 0, "generate"), TaskSpec("b", 2, "generate")))


def test_metrics():
    assert exact_match(" Positive ", "positive") == 1.0
    assert exact_match("positive.", "positive") == 0.0
    assert rouge_l_f1("what is the capital of france", "what is the capital of france") == 1.0
    assert rouge_l_f1("", "a b") == 0.0
    # LCS "the cat" (2): p = 2/3, r = 2/4 -> F1 = 4/7
    assert rouge_l_f1("the big cat", "the cat sat down") == pytest.approx(4 / 7)
    groups = {"nli": ["nli"], "classify": ["sentiment", "question_type"], "generate": ["question_gen"]}
    per = {"nli": 0.3, "sentiment": 0.9, "question_type": 0.5, "question_gen": 0.4}
    assert overall_score(per, groups) == pytest.approx((0.3 + 0.7 + 0.4) / 3)


def test_paper_grouping():
    rows = [{"task": "nli", "input": "i", "target": lab} for lab in ["a", "b", "c"] * 3]
    rows += [{"task": "sentiment", "input": "i", "target": lab} for lab in ["p", "n"] * 3]
    assert TaskRegistry.infer(rows).groups() == {"nli": ["nli"], "classify": ["sentiment"]}


def test_spread_head_takes_every_task_in_turn():
    rows = [Example("a", f"a{i}", "x") for i in range(5)] + [Example("b", f"b{i}", "y") for i in range(2)]
    head = spread_head(rows, 5)
    assert [r.input for r in head] == ["a0", "b0", "a1", "b1", "a2"]  # b runs out, a fills in
    assert spread_head(rows, 0) == rows and spread_head(rows, 99) == rows


def test_builtin_mix_has_each_input_once(caplog):
    """The corpus repeats questions; the built-in mix must not, or repeats straddle the split."""
    pytest.importorskip("chatterbot_corpus")
    pytest.importorskip("chitchat_dataset")
    from collections import Counter

    from alter_edge.default_mix import build_default_mix

    rows = build_default_mix()
    counts = Counter((r.task, r.input) for r in rows)
    assert max(counts.values()) == 1
    assert {r.task for r in rows} == {"nli", "question_gen", "topic", "question"}
    with caplog.at_level("WARNING", logger="alter_edge.data"):
        stratified_split(rows, 0.1, 0)
    assert "repeat a train row" not in caplog.text


def test_builtin_mix_is_the_default_with_100_dev_rows_a_task():
    """No --data: the built-in mix, split 100 dev rows a task (question_gen: half its 171)."""
    pytest.importorskip("chatterbot_corpus")
    pytest.importorskip("chitchat_dataset")
    from alter_edge.data import BUILTIN_SOURCE, load_task_rows, split_task_rows, task_counts

    rows, source = load_task_rows(None)
    assert source == BUILTIN_SOURCE
    assert task_counts(rows) == {"nli": 940, "question": 400, "question_gen": 171, "topic": 316}
    train, dev = split_task_rows(rows, source)
    assert task_counts(dev) == {"nli": 100, "question": 100, "question_gen": 85, "topic": 100}
    assert task_counts(train)["question_gen"] == 86
    assert not {(r.task, r.input) for r in dev} & {(r.task, r.input) for r in train}
    assert sorted({r.target for r in rows if r.task == "nli"}) == ["contradiction", "entailment", "neutral"]
    assert sorted({r.target for r in rows if r.task == "question"}) == ["no", "yes"]
    assert split_task_rows(rows, source) == (train, dev)  # fixed
    # a data file keeps the fractional split
    _, dev_file = split_task_rows(rows, "some.jsonl", 0.1)
    assert task_counts(dev_file)["nli"] == 94


def test_per_task_split_counts():
    rows = [Example(t, f"{t}{i}", "y") for t, n in (("a", 500), ("b", 30), ("c", 1)) for i in range(n)]
    kept, aside = stratified_indices(rows, 0.1, 0, per_task=100)
    got = Counter(rows[i].task for i in aside)
    assert got == {"a": 100, "b": 15} and len(kept) + len(aside) == len(rows)
    with pytest.raises(DataError, match="per task must be >= 1"):
        stratified_indices(rows, 0.1, 0, per_task=0)
