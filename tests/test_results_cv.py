"""benchmarks/results.py --folds: k-fold cross-validation on a tiny model. Every train row is
scored once, by the fold run that did not train on it; the combined per-row predictions give
benchmarks/paired.py per-task and overall paired intervals; the authors' character-level
ROUGE-L stands beside the word-level score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alter_edge.data import load_jsonl, write_jsonl
from alter_edge.testing import TINY_ROWS, load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "results.py"
results = load_script(SCRIPT, "bench_results_cv")
paired = load_script(SCRIPT.parent / "paired.py", "bench_paired_cv")


def test_folds_cover_every_row_once_stratified():
    rows = [type("R", (), {"task": t})() for t in "aaaaabbbbbbbc" * 2]
    fold = results.fold_of(rows, 3, 0)
    assert sorted(set(fold)) == [0, 1, 2]
    for t in "abc":
        per = [sum(1 for r, f in zip(rows, fold, strict=True) if r.task == t and f == k) for k in range(3)]
        assert max(per) - min(per) <= 1
    assert fold == results.fold_of(rows, 3, 0)


def test_cross_validation_scores_every_train_row_and_pairs(tmp_path, trainable_llama_dir, capsys, monkeypatch):
    monkeypatch.setenv("ALTER_EDGE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data.jsonl"
    write_jsonl(data, TINY_ROWS)
    out = tmp_path / "cv"
    argv = ["--data", str(data), "--out", str(out), "--quick", "--base-model", str(trainable_llama_dir),
            "--rows", "shared_lora", "mta_one_stage", "export", "--seeds", "0", "--folds", "2", "--threads", "1",
            "--quiet", "--set", "eval_max_new_tokens=4", "--set", 'mta={"num_top_layers": 2}']
    assert results.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["folds"] == 2 and [r["row"] for r in res["rows"]] == ["shared_lora", "mta_one_stage"]
    assert res["export"] is None
    scored = load_jsonl(out / "dev.jsonl")
    assert len(scored) == res["meta"]["split"]["train_rows"]  # every train row, once
    folds = [load_jsonl(out / "folds" / f"fold{f}-test.jsonl") for f in range(2)]
    assert sorted(r.input + r.task for f in folds for r in f) == sorted(r.input + r.task for r in scored)
    for f in range(2):  # a fold's training rows are exactly the other folds' rows
        train = load_jsonl(out / "folds" / f"fold{f}-train.jsonl")
        assert len(train) + len(folds[f]) == len(scored) and train == folds[1 - f]
    for row in ("shared_lora", "mta_one_stage"):
        run = json.loads((out / f"{row}-s0" / "result.json").read_text())
        assert len(run["eval"]["predictions"]) == len(scored) and len(run["fold_overall"]) == 2
        assert 0.0 <= run["eval"]["overall_char"] <= 1.0 and "per_task_char" in run["eval"]
    capsys.readouterr()
    assert paired.main([str(out), "mta_one_stage", "shared_lora", "--json", "--quiet", "--rounds", "200"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["dev_rows"] == len(scored)
    assert sum(r["pairs"] for r in cmp["per_task"].values()) == len(scored)
    a = json.loads((out / "mta_one_stage-s0" / "result.json").read_text())["eval"]
    b = json.loads((out / "shared_lora-s0" / "result.json").read_text())["eval"]
    assert cmp["overall_diff"] == pytest.approx(a["overall"] - b["overall"], abs=2e-4)
    for row in ("mta_one_stage", "shared_lora"):  # training time beside the scores: the folds' sums
        fold_runs = [json.loads((out / "folds" / f"{row}-s0-f{f}" / "result.json").read_text()) for f in range(2)]
        assert cmp["time"][row]["cpu_s"] == pytest.approx(sum(r["cpu_s"] for r in fold_runs), abs=0.2)
        assert cmp["time"][row]["train_s"] == pytest.approx(sum(r["train_s"] for r in fold_runs), abs=0.2)
        assert cmp["time"][row]["train_s"] > 0
    assert "overall (char)" in (out / "results.md").read_text()
    assert results.main(argv) == 0  # again: every fold reused
    # a run still going: only fold 0 finished by both rows
    (out / "folds" / "shared_lora-s0-f1" / "result.json").rename(out / "f1-result.json")
    capsys.readouterr()
    assert paired.main([str(out), "mta_one_stage", "shared_lora", "--partial-folds", "--json", "--quiet",
                        "--rounds", "200"]) == 0
    part = json.loads(capsys.readouterr().out)
    assert part["dev_rows"] == len(folds[0]) == sum(r["pairs"] for r in part["per_task"].values())
    assert part["time"]["shared_lora"]["cpu_s"] == json.loads(
        (out / "folds" / "shared_lora-s0-f0" / "result.json").read_text())["cpu_s"]
    f0 = {r: json.loads((out / "folds" / f"{r}-s0-f0" / "result.json").read_text())["eval"]
          for r in ("mta_one_stage", "shared_lora")}
    assert part["overall_diff"] == pytest.approx(f0["mta_one_stage"]["overall"] - f0["shared_lora"]["overall"], abs=2e-4)
    # two processes may split the folds: --only-folds 0 reuses fold 0 and leaves the missing fold 1 alone
    assert results.main(argv + ["--only-folds", "0"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["not_run"] == ["shared_lora-s0-f1"]
    assert not (out / "folds" / "shared_lora-s0-f1" / "result.json").exists()
    assert [r["row"] for r in res["rows"]] == ["mta_one_stage"]  # shared_lora lacks a fold
    assert results.main(argv + ["--only-folds", "1"]) == 0  # trains it
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["not_run"] == [] and [r["row"] for r in res["rows"]] == ["shared_lora", "mta_one_stage"]
    with pytest.raises(SystemExit):
        results.main(argv + ["--only-folds", "2"])
    assert "--only-folds takes folds 0..1" in capsys.readouterr().err
