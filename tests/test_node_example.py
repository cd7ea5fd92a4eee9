"""examples/node/generate.mjs (a user of the alter-edge npm package in js/: Node.js +
onnxruntime-node, no Python) gives the Python runtime's greedy tokens on a tiny bundle: one
prompt per task, on each task's own graph and on the multi-task graph, fp32 and int8.
Skipped, saying so, where node, js/node_modules or examples/node/node_modules is missing
(scripts/setup.sh runs `npm ci` in both when npm is on PATH). The package's own tests are
tests/test_js_runtime.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from alter_edge.testing import TINY_ROWS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "node"
NODE = shutil.which("node")
MAX_NEW = 12

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(NODE is None, reason="node is not on PATH (the Node.js example needs Node.js 20+)"),
    pytest.mark.skipif(not (ROOT / "js" / "node_modules").is_dir() or not (EXAMPLE / "node_modules").is_dir(),
                       reason="js/node_modules or examples/node/node_modules is missing: run "
                              "`ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix js && npm ci --prefix examples/node` "
                              "(scripts/setup.sh does when npm is on PATH)"),
]


def _node(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([NODE, *args], cwd=EXAMPLE, input=stdin, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"node {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p


def _greedy_js(bundle: Path, task: str, text: str, *flags: str) -> dict:
    out = _node("generate.mjs", str(bundle), "--task", task, "--max-new-tokens", str(MAX_NEW),
                "--threads", "1", "--json", *flags, text)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def node_bundle(tmp_path_factory, tiny_llama_dir):
    """A graph per task plus the multi-task graph, fp32 and int8 (random adapters: the int8
    quality gates are lifted, as in tests/test_gate.py)."""
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint
    from alter_edge.testing import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("node")
    ck = make_tiny_checkpoint(root / "ck", tiny_llama_dir, kind="lora")
    lifted = dict(int8_budget=100.0, int4_budget=100.0, min_top1_int8=0.0, min_top1_int4=0.0)
    export_checkpoint(ck, root / "bundle", ExportOptions(tasks="all", fp32=True, int8=True, progress=False,
                                                         **lifted))
    return root / "bundle"


def _python_greedy(bundle: Path, task: str, text: str, graph: str, precision: str) -> tuple[list[int], list[int], str]:
    """(prompt ids, greedy token ids, text) from the Python runtime on the same graph."""
    from alter_edge.runtime import EdgeModel
    from alter_edge.runtime.generate import SamplingParams, decode

    model = EdgeModel.load(bundle, threads=1, precision=precision, tasks=[task] if graph == "task" else None)
    ids, _ = model.prompt_ids(text, task)
    if graph == "task":  # the public API: an app loaded for one task runs on that task's own graph
        g = model.generate(text, task=task, max_new_tokens=MAX_NEW)
        assert model.runner_for([task]).path.name == f"task-{task}.{precision}.onnx"
        return ids, g.token_ids, g.text
    # the multi-task graph, fed task_ids: EdgeModel's own decode loop on that graph
    runner = model.runner_for([t.name for t in model.tasks])  # several tasks -> the multi-task graph
    assert runner.takes_task_ids
    toks = [t for _, t in decode(runner, [ids], [model.tasks.id_of(task)], model.bundle.eos_id,
                                 model.bundle.pad_id, SamplingParams(MAX_NEW))]
    return ids, toks, model.tokenizer.decode(toks, skip_special_tokens=True).lstrip()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("graph", ["task", "multi"])
def test_node_greedy_equals_python(node_bundle, graph, precision):
    lengths = []
    for task in ("colour", "echo", "parity"):
        text = next(r["input"] for r in TINY_ROWS if r["task"] == task)
        ids, ref, ref_text = _python_greedy(node_bundle, task, text, graph, precision)
        got = _greedy_js(node_bundle, task, text, "--graph", graph, "--precision", precision)
        name = f"task-{task}.{precision}.onnx" if graph == "task" else f"model.{precision}.onnx"
        assert got["graph"] == name
        assert got["prompt_ids"] == ids, task
        assert got["token_ids"] == ref, task
        assert got["text"] == ref_text, task
        assert got["finish_reason"] == ("length" if len(ref) == MAX_NEW else "eos")
        lengths.append(len(ref))
    assert max(lengths) > 1  # the comparison is not vacuous


def test_node_truncates_like_python(node_bundle):
    from alter_edge.runtime import EdgeModel

    text = "swap " + " ".join(["red", "dog"] * 200)  # over the bundle's max_prompt_tokens
    refused = _node("generate.mjs", str(node_bundle), "--task", "echo", text, check=False)
    assert refused.returncode == 1 and "max_prompt_tokens" in refused.stderr
    ids, cut = EdgeModel.load(node_bundle, threads=1).prompt_ids(text, "echo", truncate=True)
    got = _greedy_js(node_bundle, "echo", text, "--truncate")
    assert cut and got["truncated"] and got["prompt_ids"] == ids


def test_node_refuses_a_changed_weight_file(node_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(node_bundle, b)
    w = b / "weights.fp32.bin"
    data = bytearray(w.read_bytes())
    data[100] ^= 1
    w.write_bytes(bytes(data))
    p = _node("generate.mjs", str(b), "--task", "echo", "--precision", "fp32", "swap red blue", check=False)
    assert p.returncode == 1
    assert "weights.fp32.bin does not match manifest.json" in p.stderr


def test_node_tokenizer_equals_python_on_smollm2():
    """The real SmolLM2 tokenizer.json (ByteLevel BPE), when the built-in base model has been
    materialized in the cache: ids and decoded text equal the Python tokenizers library's."""
    from tokenizers import Tokenizer

    from alter_edge.base_model import cache_dir

    path = cache_dir() / "models" / "smollm2-135m" / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"{path} is not there (the built-in base model has not been loaded on this machine)")
    texts = ["Is the sky green?\nAnswer:", "Hello, world! 123 4567\n\nAnswer:", "  two  spaces\tand a tab",
             "café naïve 日本語 😀 ßtraße", "<|im_start|>user hi<|im_end|>", "it's don't they're",
             "{braces} [x] (y) $100.50 — dash …", "a\r\nb"]
    out = _node("tokenizer.mjs", str(path), stdin="".join(json.dumps(t) + "\n" for t in texts))
    got = [json.loads(line) for line in out.stdout.splitlines()]
    tok = Tokenizer.from_file(str(path))
    for t, g in zip(texts, got, strict=True):
        ids = tok.encode(t, add_special_tokens=False).ids
        assert g["ids"] == ids, t
        assert g["text"] == tok.decode(ids, skip_special_tokens=True), t
