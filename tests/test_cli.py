"""The train/eval commands through click's CliRunner, and their one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from alter_edge.cli import main


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTER_EDGE_CACHE", str(tmp_path / "cache"))


def _train_args(base, data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--base-model", str(base),
            "--stage1-steps", "6", "--stage2-steps", "2", "--batch-size", "4", "--top-layers", "2",
            "--quiet", *extra]


def test_train_then_eval(trainable_llama_dir, tiny_data, tmp_path):
    r = CliRunner().invoke(main, _train_args(trainable_llama_dir, tiny_data, tmp_path / "run"))
    assert r.exit_code == 0, r.output
    assert "stage1: dev overall" in r.output and "stage2: dev overall" in r.output
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--data", str(tiny_data), "--json",
                                  "--quiet", "--max-rows", "9", "--label-scoring"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert sum(res["counts"].values()) == 9
    assert set(res["per_task"]) <= {"colour", "echo", "parity"}
    assert all(0.0 <= v <= 1.0 for v in res["per_task"].values())
    # the authors' metric beside ours: the same exact match for classify tasks, character ROUGE-L for generate
    assert set(res["per_task_char"]) == set(res["per_task"]) and 0.0 <= res["overall_char"] <= 1.0
    assert all(res["per_task_char"][t] == res["per_task"][t] for t in res["per_task"] if res["kinds"][t] == "classify")
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--data", str(tiny_data), "--quiet",
                                  "--max-rows", "6"])
    assert r.exit_code == 0 and "overall (mean over task groups)" in r.output and "char" in r.output


def test_train_flags_reach_the_saved_configs(trainable_llama_dir, tiny_data, tmp_path):
    """--attention/--no-attention, --gate and --stage2-holdout land in the checkpoint's configs."""
    runs = {"default": [], "off": ["--no-attention", "--stage2-holdout", "0.25", "--gate", "token",
                                   "--eval-rows", "3"]}
    for name, extra in runs.items():
        r = CliRunner().invoke(main, _train_args(trainable_llama_dir, tiny_data, tmp_path / name, *extra))
        assert r.exit_code == 0, r.output
    mta = {n: json.loads((tmp_path / n / "mta_config.json").read_text()) for n in runs}
    train = {n: json.loads((tmp_path / n / "train_config.json").read_text()) for n in runs}
    assert mta["default"]["lora_attention"] is True and mta["off"]["lora_attention"] is False
    assert mta["default"]["gate"] == "task" and mta["off"]["gate"] == "token"
    assert train["default"]["stage2_holdout"] == 0.0 and train["off"]["stage2_holdout"] == 0.25
    assert train["default"]["eval_max_rows"] == 0 and train["off"]["eval_max_rows"] == 3
    r = CliRunner().invoke(main, _train_args(trainable_llama_dir, tiny_data, tmp_path / "bad", "--stage2-holdout", "1.5"))
    assert r.exit_code != 0 and "stage2_holdout must be in [0, 1)" in r.output


def test_one_line_errors(trainable_llama_dir, tiny_data, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, _train_args(trainable_llama_dir, tmp_path / "absent.jsonl", tmp_path / "o"))
    assert r.exit_code == 1 and "data file not found" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, _train_args(tmp_path / "no-model", tiny_data, tmp_path / "o"))
    assert r.exit_code == 1 and "not found" in r.output
    r = runner.invoke(main, _train_args("nonsense-model", tiny_data, tmp_path / "o"))
    assert r.exit_code == 1 and "built-in name (smollm2-135m)" in r.output
    assert not (tmp_path / "o").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "a", "input": "x", "target": "y"}\n{"task": "a"\n')
    r = runner.invoke(main, _train_args(trainable_llama_dir, bad, tmp_path / "o"))
    assert r.exit_code == 1 and "line 2: not valid JSON" in r.output
    assert runner.invoke(main, _train_args(trainable_llama_dir, tiny_data, tmp_path / "run")).exit_code == 0
    r = runner.invoke(main, _train_args(trainable_llama_dir, tiny_data, tmp_path / "run"))
    assert r.exit_code == 1 and "already holds a run" in r.output
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"task": "poetry", "input": "x", "target": "y"}\n')
    r = runner.invoke(main, ["eval", str(tmp_path / "run"), "--data", str(unknown), "--quiet"])
    assert r.exit_code == 1 and "unknown task(s) 'poetry'; known tasks: colour, echo, parity" in r.output
    r = runner.invoke(main, ["eval", str(tmp_path / "missing"), "--quiet"])
    assert r.exit_code == 1 and "checkpoint not found" in r.output
    # --bf16 is an alias of --dtype bfloat16, not a silent override of another --dtype
    r = runner.invoke(main, ["eval", str(tmp_path / "run"), "--bf16", "--dtype", "float32", "--quiet"])
    assert r.exit_code == 2 and "cannot be combined with --dtype float32" in r.output
