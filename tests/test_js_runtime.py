"""The JavaScript runtime (js/, the `alter-edge` npm package) against the Python runtime.

This test builds tiny fp32 and int8 bundles (a graph per task plus the multi-task graph),
writes what the Python runtime gives on them to a JSON file (greedy token ids and text, alone
on each task's graph and on the multi-task graph, and in a mixed-task batch; a stop string;
label scores; a truncated prompt; incremental detokenization of split UTF-8), then runs
`node --test js/test/` with ALTER_EDGE_JS_FIXTURES pointing at that file, and asserts that
Node's runner passed every test and skipped none.

Where node or js/node_modules is missing, the test is skipped and says why (scripts/setup.sh
runs `npm ci` in js/ when npm and Node.js 20+ are on PATH; CI has them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alter_edge.testing import TINY_ROWS

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "js"
NODE = shutil.which("node")
MAX_NEW = 12
TASKS = ("colour", "echo", "parity")

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(NODE is None, reason="node is not on PATH: the JavaScript runtime (js/) needs Node.js 20+ "
                                            "to be tested; these tests did NOT run"),
    pytest.mark.skipif(not (JS / "node_modules").is_dir(),
                       reason="js/node_modules is missing: run `ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix js` "
                              "(scripts/setup.sh does when npm is on PATH); the JavaScript tests did NOT run"),
]


def _texts(task: str, n: int) -> list[str]:
    return [r["input"] for r in TINY_ROWS if r["task"] == task][:n]


class ByteTokenizer:
    """Token id = one UTF-8 byte: decoding a prefix can end inside a character (U+FFFD)."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def _expected(bundle: Path) -> dict:
    from alter_edge.runtime import EdgeModel
    from alter_edge.runtime.generate import RowText

    out: dict = {"bundle": str(bundle), "max_new_tokens": MAX_NEW, "tasks": list(TASKS), "precisions": {}}
    for precision in ("fp32", "int8"):
        multi = EdgeModel.load(bundle, threads=1, precision=precision)
        alone = []
        for task in TASKS:
            text = _texts(task, 1)[0]
            own = EdgeModel.load(bundle, threads=1, precision=precision, tasks=[task])
            for graph, model in (("task", own), ("multi", multi)):
                g = model.generate(text, task=task, max_new_tokens=MAX_NEW)
                path = model.runner_for([task]).path.name
                assert path == (f"task-{task}.{precision}.onnx" if graph == "task" else f"model.{precision}.onnx")
                alone.append({"task": task, "input": text, "graph": graph, "path": path,
                              "prompt_ids": model.prompt_ids(text, task)[0], "token_ids": g.token_ids,
                              "text": g.text, "finish_reason": g.finish_reason})
        # a mixed batch of rows of every task, of different lengths, on the multi-task graph
        texts = _texts("echo", 2) + _texts("colour", 2) + _texts("parity", 2)
        tasks = ["echo", "echo", "colour", "colour", "parity", "parity"]
        order = [0, 2, 4, 1, 3, 5]  # interleaved
        texts, tasks = [texts[i] for i in order], [tasks[i] for i in order]
        mixed = multi.generate(texts, tasks=tasks, max_new_tokens=MAX_NEW)
        assert multi.runner_for(tasks).takes_task_ids
        # a stop string: the third word of the first echo row's greedy text
        words = mixed[0].text.split()
        stop = words[2] if len(words) > 2 else None
        stopped = multi.generate(texts, tasks=tasks, max_new_tokens=MAX_NEW, stop=[stop]) if stop else None
        classify = {}
        for task in ("colour", "parity"):
            cl_texts = _texts(task, 3)
            res = multi.classify(cl_texts, task=task)
            classify[task] = {"texts": cl_texts, "out": [{"label": c.label, "probability": c.probability,
                                                          "scores": c.scores} for c in res]}
        # seeded sampling: numpy's default_rng([seed, row]) per row, which the JS runtime reproduces
        sampled = []
        for opts in ({"temperature": 1.3, "seed": 7}, {"temperature": 0.9, "top_k": 12, "top_p": 0.9, "seed": 1234},
                     {"temperature": 2.0, "top_p": 0.5, "seed": 2**40 + 5}):
            gs = multi.generate(texts, tasks=tasks, max_new_tokens=MAX_NEW, **opts)
            sampled.append({"options": opts, "out": [{"token_ids": g.token_ids, "text": g.text,
                                                      "finish_reason": g.finish_reason} for g in gs]})
        out["precisions"][precision] = {
            "alone": alone,
            "sampled": sampled,
            "mixed": {"texts": texts, "tasks": tasks,
                      "out": [{"token_ids": g.token_ids, "text": g.text, "finish_reason": g.finish_reason}
                              for g in mixed]},
            "stop": None if stopped is None else {
                "stop": stop, "out": [{"token_ids": g.token_ids, "text": g.text, "finish_reason": g.finish_reason}
                                      for g in stopped]},
            "classify": classify,
        }
    m = EdgeModel.load(bundle, threads=1)
    long_text = "swap " + " ".join(["red", "dog"] * 200)
    ids, cut = m.prompt_ids(long_text, "echo", truncate=True)
    assert cut
    out["truncate"] = {"input": long_text, "task": "echo", "prompt_ids": ids,
                       "max_prompt_tokens": m.bundle.max_prompt_tokens}
    # incremental detokenization: what RowText.push gives for each token, one byte per token
    detok = []
    for text, stop in (("héllo wörld 日本語 😀 end", []), ("  lead ü 😀 stop here", ["stop"]),
                       ("ab日本cd", ["本c"]), ("xx😀yy", ["😀"]), ("plain text", ["t", "xt"])):
        row = RowText(ByteTokenizer(), tuple(stop))
        ids, pieces = list(text.encode()), []
        for t in ids:
            pieces.append(row.push(t))
            if row.stopped:
                break
        pieces.append(row.finish())
        detok.append({"ids": ids, "stop": stop, "pieces": pieces, "text": row.text, "stopped": row.stopped})
    out["detok"] = detok
    import numpy as np

    out["rng"] = [{"seed": seed, "row": row, "draws": np.random.default_rng([seed, row]).random(5).tolist()}
                  for seed, row in ((0, 0), (7, 3), (1234, 0), (2**32 + 1, 2), (2**53 - 1, 11))]
    return out


@pytest.fixture(scope="module")
def js_bundle(tmp_path_factory, tiny_llama_dir):
    """A graph per task plus the multi-task graph, fp32 and int8 (random adapters: the int8
    quality gates are lifted, as in tests/test_gate.py)."""
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint
    from alter_edge.testing import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("js")
    ck = make_tiny_checkpoint(root / "ck", tiny_llama_dir, kind="lora")
    lifted = dict(int8_budget=100.0, int4_budget=100.0, min_top1_int8=0.0, min_top1_int4=0.0)
    export_checkpoint(ck, root / "bundle", ExportOptions(tasks="all", fp32=True, int8=True, progress=False,
                                                         **lifted))
    return root / "bundle"


def test_js_runtime_matches_python(js_bundle, tmp_path):
    expected = _expected(js_bundle)
    # the comparison is not vacuous: some greedy rows run several tokens, some end at eos
    lengths = [len(r["token_ids"]) for p in expected["precisions"].values() for r in p["mixed"]["out"]]
    assert max(lengths) > 1
    fixtures = tmp_path / "expected.json"
    fixtures.write_text(json.dumps(expected))
    env = {**os.environ, "ALTER_EDGE_JS_FIXTURES": str(fixtures), "ALTER_EDGE_JS_WORK": str(tmp_path / "work")}
    p = subprocess.run([NODE, "--test", "--test-reporter=tap", "--test-concurrency=1", "test/"], cwd=JS, env=env,
                       capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    summary = {k: int(v) for k, v in re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", out, re.M)}
    assert p.returncode == 0 and summary.get("fail") == 0, f"node --test failed:\n{out[-6000:]}"
    assert summary.get("skipped") == 0 and summary.get("cancelled", 0) == 0, f"node --test skipped tests:\n{out[-4000:]}"
    assert summary.get("pass", 0) >= 20, f"too few JavaScript tests ran:\n{out[-4000:]}"


def test_js_bench_runs_both_engines_on_the_same_graph(js_bundle, tmp_path):
    """benchmarks/js_bench/js_bench.py on the tiny bundle: one round, both engines, batch 1 and a
    mixed batch of 2 (a smoke test: the numbers mean nothing here)."""
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "js_bench" / "js_bench.py"), str(js_bundle),
                        "--rounds", "1", "--new-tokens", "3", "--batches", "1", "2", "--threads", "1",
                        "--precision", "fp32", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {(x["engine"], x["batch"]) for x in res["runs"]} == {("node", 1), ("node", 2), ("python", 1), ("python", 2)}
    for x in res["runs"]:
        assert x["graph"] == "model.fp32.onnx" and x["tokens"] == 3 * x["batch"] and x["decode_tps"] > 0
    assert "node/python decode" in r.stdout


def test_js_row_text_equals_python_on_smollm2_tokenizer():
    """Streaming text on a real byte-level BPE tokenizer (SmolLM2-135M's, where the built-in base
    model is cached): the package's tokenizer and RowText give the Python runtime's pieces, token
    by token, through accents, CJK, emoji split over several tokens, and stop strings."""
    from tokenizers import Tokenizer

    from alter_edge.base_model import cache_dir
    from alter_edge.runtime.generate import RowText

    path = cache_dir() / "models" / "smollm2-135m" / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"{path} is not there (the built-in base model has not been loaded on this machine)")
    tok = Tokenizer.from_file(str(path))
    cases = [(" Paris is the capital of France.\nNext", ["\n"]), (" café naïve 日本語 😀 ßtraße 🎉🎉", []),
             (" tokens 👩‍👩‍👧 and 中文字符 end", ["字符"]), (" a😀b", ["😀"]), ("  two  spaces\tand a tab", ["tab"])]
    lines, want = [], []
    for text, stop in cases:
        ids = tok.encode(text, add_special_tokens=False).ids
        row = RowText(tok, tuple(stop))
        pieces = []
        for t in ids:
            pieces.append(row.push(t))
            if row.stopped:
                break
        pieces.append(row.finish())
        lines.append(json.dumps({"ids": ids, "stop": stop}))
        want.append({"pieces": pieces, "text": row.text, "stopped": row.stopped})
    assert any(p == "" for w in want for p in w["pieces"][:-1])  # some token ends inside a character
    p = subprocess.run([NODE, str(JS / "test-support" / "detok.mjs"), str(path)], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = [json.loads(line) for line in p.stdout.splitlines()]
    assert got == want
