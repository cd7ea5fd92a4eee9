"""benchmarks/mixture_report.py: per-block mixtures read from a checkpoint, against the prior."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from alter_edge.config import MTAConfig
from alter_edge.mta import prior_logits
from alter_edge.testing import load_script, make_tiny_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mixture_report.py"


report = load_script(SCRIPT, "bench_mixture_report")


def test_summary_of_the_prior_matches_its_formula():
    cfg = MTAConfig(num_tasks=4)  # K = 5, one shared; logits own 0.2, shared 0.1, other 0
    own, shared, foreign = report.summarize(torch.softmax(prior_logits(cfg) / cfg.temperature, -1), cfg)
    z = math.e**2 + math.e + 3
    assert math.isclose(own, math.e**2 / z, rel_tol=1e-5)
    assert math.isclose(shared, math.e / z, rel_tol=1e-5)
    assert math.isclose(foreign, 3 / z, rel_tol=1e-5)


def test_report_prints_each_block_from_the_checkpoint(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    ck = make_tiny_checkpoint(tmp_path / "ck", tiny_llama_dir)  # mixtures moved off the prior
    monkeypatch.setattr(sys, "argv", ["mixture_report.py", str(ck)])
    report.main()
    out = capsys.readouterr().out
    state = load_file(str(ck / "adapters.safetensors"))
    blocks = [k.removesuffix(".mixture.logits") for k in state if k.endswith("mixture.logits")]
    assert len(blocks) == 2 and all(b in out for b in blocks)
    cfg = MTAConfig.from_dict(json.loads((ck / "mta_config.json").read_text()))
    w = torch.softmax(state[[k for k in state if k.endswith("mixture.logits")][0]] / cfg.temperature, -1)
    assert " ".join(f"{x:.3f}" for x in w[0].tolist()) in out  # the trained weights, not the prior's
    own, _, _ = report.summarize(w, cfg)
    assert f"{own:>7.3f}" in out


def test_token_gate_report_measures_how_far_tokens_move_from_the_task_mixture(
        tiny_llama_dir, tmp_path, monkeypatch, capsys):
    import pytest

    from alter_edge.testing import TINY_ROWS

    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TINY_ROWS[:12]))
    tv = {}
    for std in (0.0, 3.0):
        ck = make_tiny_checkpoint(tmp_path / f"ck{std}", tiny_llama_dir, gate="token", gate_std=std)
        monkeypatch.setattr(sys, "argv", ["mixture_report.py", str(ck), "--tokens", str(data)])
        report.main()
        out = capsys.readouterr().out
        assert "per-token gate over 12 rows" in out
        tail = out.split("all blocks:")[1].split("\n")[1:]
        tv[std] = [float(line.split()[-1]) for line in tail if line.strip()]
        assert len(tv[std]) == len({r["task"] for r in TINY_ROWS[:12]})
    assert all(x == 0.0 for x in tv[0.0])  # a zero gate is the task mixture exactly
    assert all(x > 0.01 for x in tv[3.0])
    plain = make_tiny_checkpoint(tmp_path / "plain", tiny_llama_dir)
    monkeypatch.setattr(sys, "argv", ["mixture_report.py", str(plain), "--tokens", str(data)])
    with pytest.raises(SystemExit, match="per-token gate only"):
        report.main()
