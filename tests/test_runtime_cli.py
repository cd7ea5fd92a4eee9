"""``alter-edge run`` on texts and ``alter-edge bench`` through click's CliRunner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from alter_edge.cli import main


def test_run_texts_classify_and_generate(runtime_bundle, edge_model):
    runner = CliRunner()
    r = runner.invoke(main, ["run", str(runtime_bundle), "--task", "colour", "--threads", "1",
                             "is red a colour", "is cat a colour"])
    assert r.exit_code == 0, r.output
    want = edge_model.classify(["is red a colour", "is cat a colour"], "colour")
    assert r.output.splitlines() == [f"{c.label}\t{c.probability:.3f}" for c in want]
    r = runner.invoke(main, ["run", str(runtime_bundle), "--task", "echo", "--generate", "--json",
                             "--max-new-tokens", "5", "repeat cat dog"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    assert rec["output"] == edge_model.generate("repeat cat dog", task="echo", max_new_tokens=5).text
    r = runner.invoke(main, ["run", str(runtime_bundle), "--task", "echo", "--generate", "--stream",
                             "--max-new-tokens", "5", "repeat cat dog"])
    assert r.exit_code == 0 and r.output.strip() == rec["output"]


def test_bench_json(runtime_bundle):
    r = CliRunner().invoke(main, ["bench", str(runtime_bundle), "--json", "--threads", "1",
                                  "--new-tokens", "4", "--repeats", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    for k in ("load_s", "ttft_ms", "decode_tok_s_b1", "decode_tok_s_b8", "classify_rows_s", "peak_rss_mb"):
        assert res[k] > 0, k


def test_help_lists_runtime_commands():
    r = CliRunner().invoke(main, ["--help"])
    assert "run" in r.output and "bench" in r.output


def test_example_app(runtime_bundle, edge_model):
    import subprocess
    import sys
    from pathlib import Path

    app = Path(__file__).resolve().parents[1] / "examples" / "edge_cli_app.py"
    r = subprocess.run([sys.executable, str(app), str(runtime_bundle), "--task", "colour", "--threads", "1"],
                       input="is red a colour\nis cat a colour\n\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    want = edge_model.classify(["is red a colour", "is cat a colour"], "colour")
    assert r.stdout.splitlines() == [f"{c.label}  ({c.probability:.2f})" for c in want]
