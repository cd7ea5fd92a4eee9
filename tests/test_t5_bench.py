"""benchmarks/t5_bench.py (T5 against optimum-onnx, issue 39): its pieces without an anchor, and its
``--quick`` run end to end on a tiny random T5 where ``.venv-optimum`` exists
(``bash scripts/anchors.sh optimum``; skipped otherwise, as in CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alter_edge.testing import load_script

ROOT = Path(__file__).resolve().parents[1]
bench = load_script(ROOT / "benchmarks" / "t5_bench.py", "bench_t5")


def test_agreement_counts_tokens_by_position_and_whole_rows():
    got = bench.agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [4, 5, 6]])
    assert got == {"tokens": round(5 / 6, 4), "rows": 0.5}
    assert bench.agreement([[1, 2]], [[1, 2, 3]]) == {"tokens": round(2 / 3, 4), "rows": 0.0}


def test_tokenizer_maps_each_word_to_its_id_and_rows_use_its_words():
    tok = bench.make_tokenizer(40)
    assert tok.encode("t3 t39 <eos>").ids == [3, 39, 1]
    rows = bench.synthetic_rows(40, seed=0, per_task=4)
    assert {r["task"] for r in rows} == {"alpha", "beta", "gamma"} and len(rows) == 12
    assert all(2 not in tok.encode(r["input"] + " " + r["target"]).ids for r in rows)  # no <unk>
    prompts = bench.random_prompts(40, 8, 16, seed=1)
    assert len(prompts) == 8 and {len(p) for p in prompts} == {16} and min(map(min, prompts)) >= 3
    assert prompts == bench.random_prompts(40, 8, 16, seed=1)


def test_quick_shrinks_the_run():
    a = bench.parse_args(["--quick"])
    assert (a.rounds, a.export_rounds, a.prompt_tokens, a.new_tokens) == (1, 1, 16, 8)
    full = bench.parse_args([])
    assert (full.rounds, full.prompt_tokens, full.new_tokens, full.batches, full.threads) == (5, 64, 32, [1, 8], 2)


def test_a_work_folder_made_with_other_settings_is_refused(tmp_path):
    args = bench.parse_args(["--quick", "--t5-version", "1.1"])
    assert args.weight_scale == bench.WEIGHT_SCALE["1.1"]
    (tmp_path / "made-with.json").write_text('{"t5_version": "1.0"}')
    with pytest.raises(SystemExit, match="made with other settings"):
        bench.prepare(tmp_path, args)


@pytest.mark.slow
@pytest.mark.skipif(not bench.OPTIMUM_PY.is_file(), reason=".venv-optimum is missing (bash scripts/anchors.sh optimum)")
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "t5.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "t5_bench.py"), "--quick", "--work", str(tmp_path),
                        "--json", str(out)], capture_output=True, text=True, timeout=900,
                       env={**bench.clean_env(), "ALTER_EDGE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert "avx" in res["cpu"] or "unknown" in res["cpu"]
    ex = res["export"]["table"]
    assert all(ex[k]["wall_s"] for k in ("optimum-onnx fp32", "alter-edge fp32", "alter-edge int8")), ex
    table = res["decode"]["table"]
    for name in ("optimum-onnx fp32", "alter-edge fp32 multi-task pair", "alter-edge int8 multi-task pair",
                 "alter-edge fp32 merged pair"):
        assert table[name]["b1_tok_s"] and table[name]["b8_tok_s"], (name, table[name])
    agree = res["decode"]["agreement"]
    assert agree["optimum-onnx fp32 vs PyTorch plain base"]["tokens"] >= 0.95
    assert agree["alter-edge fp32 multi-task pair vs PyTorch MTA"]["tokens"] >= 0.95
    assert agree["alter-edge fp32 merged pair vs PyTorch MTA"]["tokens"] >= 0.95
