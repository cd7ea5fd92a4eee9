"""benchmarks/compare_bundles.py on the session's tiny bundle: one report row per engine, ratios
against the first engine, and a clear error for a malformed engine argument."""

import json
from pathlib import Path

import pytest

from alter_edge.testing import load_script

compare_bundles = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "compare_bundles.py",
                              "bench_compare_bundles")


def test_report_has_every_engine_and_ratios(runtime_bundle, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = [f"pertask={runtime_bundle}:fp32", f"again={runtime_bundle}:fp32", "--task", "echo",
            "--rounds", "2", "--prompt-tokens", "6", "--new-tokens", "3", "--threads", "1", "--json", str(out)]
    assert compare_bundles.main(argv) == 0
    rep = json.loads(out.read_text())
    assert list(rep["engines"]) == ["pertask", "again"]
    first = rep["engines"]["pertask"]
    assert first["decode_tok_s_b1_vs_pertask"] == 1.0 and first["decode_tok_s_b8"] > 0
    again = rep["engines"]["again"]
    assert again["decode_tok_s_b8_vs_pertask"] == pytest.approx(again["decode_tok_s_b8"] / first["decode_tok_s_b8"],
                                                               rel=0.02)
    assert again["graph"].endswith("task-echo.fp32.onnx") and again["graph_mb"] > 0
    assert json.loads(capsys.readouterr().out) == rep


@pytest.mark.parametrize("arg", ["nobundle", "name=path-without-precision", "=b:fp32"])
def test_malformed_engine_argument(arg):
    with pytest.raises(SystemExit, match="NAME=BUNDLE:PRECISION"):
        compare_bundles.main([arg, "--task", "echo"])
