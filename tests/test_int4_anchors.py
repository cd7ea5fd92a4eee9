"""benchmarks/int4_anchors.py's scoring on hand-made logits: answer-token top-1, the NLL increase
against fp32, paired task-metric drops, and the markdown table (no model, no anchor venv)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from alter_edge.testing import load_script

anchors = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "int4_anchors.py", "bench_int4_anchors")


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join({1: "yes", 2: "no", 3: "maybe"}.get(i, "?") for i in ids)


def test_scores_and_table():
    v = 4
    onehot = [np.eye(v)[k] * 5.0 for k in (1, 2)]  # the reference answers: token 1, then token 2
    ref = [[1], [2]]
    fp32 = [{**anchors.score_logits([onehot[0]], [1]), "greedy": [1]},
            {**anchors.score_logits([onehot[1]], [2]), "greedy": [2]}]
    assert fp32[0]["argmax"] == [1]
    assert fp32[0]["logp"][0] == pytest.approx(5.0 - np.log(np.exp(5.0) + 3), abs=1e-4)
    q = [{**anchors.score_logits([onehot[0]], [1]), "greedy": [1]},
         {**anchors.score_logits([np.eye(v)[3] * 5.0], [2]), "greedy": [3]}]  # row 2 flips
    rows = [{"kind": "classify", "task": "t", "gold": "yes"}, {"kind": "classify", "task": "t", "gold": "no"}]
    s = SimpleNamespace(rows=rows, ck=SimpleNamespace(tokenizer=_Tok()))
    got = anchors.summarize(s, ref, fp32, q)
    assert got["top1"] == 0.5 and got["first_token_top1"] == 0.5 and got["changed_answers"] == 1
    assert got["nll_increase"] == pytest.approx(5.0 / 2, abs=1e-3)
    assert got["tasks"]["t"]["drop_points"] == 50.0 and got["tasks"]["t"]["fp32"] == 1.0
    table = anchors.markdown({"results": [{"kind": "ours", "variant": "x", "model_mb": 1.0, "all_tasks_mb": 1.0,
                                           **got}, {"kind": "genai", "variant": "y", "error": "load failed"}]})
    assert "| ours | x | 1.0 | 1.0 | 0.5000 |" in table and "+50.00" in table
    rows = table.splitlines()
    assert rows[-1].startswith("| genai | y |") and "fails: load failed" in rows[-1]
    assert len({r.count("|") for r in rows}) == 1  # every row has the header's columns


def test_same_path_only_when_every_argmax_matches():
    assert anchors.same_path({"argmax": [5, 6, 0]}, [5, 6, 0], eos=0) == [5, 6]
    assert anchors.same_path({"argmax": [5, 6]}, [5, 6], eos=0) == [5, 6]  # ended at the token cap
    assert anchors.same_path({"argmax": [5, 7, 0]}, [5, 6, 0], eos=0) is None
