"""Every bundle is an onnxruntime-genai model folder (export/genai.py): ``onnxruntime_genai.Model``
loads it, ``task_ids`` is set per row with ``Generator.set_model_input``, and its greedy tokens
equal the runtime's on the same graph, per task and for a mixed batch (rows of different tasks
and prompt lengths, right-padded with the pad id), at fp32, int8 and int4."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from alter_edge.runtime import EdgeModel
from alter_edge.runtime.generate import SamplingParams, decode
from alter_edge.testing import TINY_ROWS, genai_greedy

pytestmark = pytest.mark.genai

try:
    import onnxruntime_genai as og
except ImportError:  # the genai extra (in dev on Python >= 3.11): pip install -e '.[genai]'
    og = None
needs_genai = pytest.mark.skipif(og is None, reason="onnxruntime-genai is not installed "
                                 "(pip install -e '.[genai]'; it has no wheel for Python 3.10)")

MAX_NEW = 8
# the 'parity' inputs differ in length ("count x", "count x x x x x x"): a batch of them is padded
BATCHES = {task: [r["input"] for r in TINY_ROWS if r["task"] == task][:4] for task in ("colour", "echo", "parity")}
MIXED = [("echo", "swap cat dog"), ("parity", "count x"), ("colour", "is fish a colour"),
         ("parity", "count x x x x x x"), ("echo", "swap sun moon")]
# random models: the quantized graphs are compared with themselves here, not held to a metric
LIFTED = dict(int8_budget=100.0, int4_budget=100.0, min_top1_int8=0.0, min_top1_int4=0.0)


def _prompts(model: EdgeModel, rows: list[tuple[str, str]]) -> tuple[list[list[int]], list[int]]:
    prompts = [model.prompt_ids(text, task)[0] for task, text in rows]
    # onnxruntime-genai finds each row's length by its trailing pad ids: a prompt may not end in one
    assert all(p[-1] != model.bundle.pad_id for p in prompts)
    return prompts, [model.tasks.id_of(task) for task, _ in rows]


def _edge_greedy(model: EdgeModel, prompts, task_ids, n: int = MAX_NEW, task: str | None = None) -> list[list[int]]:
    """alter-edge's greedy tokens on the graph serving ``task`` (None: the multi-task graph,
    the one genai_config.json names)."""
    runner = model.runner_for([task] if task else model.tasks.names)
    out: list[list[int]] = [[] for _ in prompts]
    for row, token in decode(runner, prompts, task_ids, model.bundle.eos_id, model.bundle.pad_id,
                             SamplingParams(max_new_tokens=n)):
        out[row].append(token)
    return out


def _genai_greedy(model, prompts, task_ids, pad: int, eos: int, n: int = MAX_NEW) -> list[list[int]]:
    return genai_greedy(model, prompts, task_ids, pad, eos, n)


def _assert_same_tokens(genai_model, edge: EdgeModel) -> None:
    pad, eos = edge.bundle.pad_id, edge.bundle.eos_id
    for task, texts in BATCHES.items():
        prompts, tids = _prompts(edge, [(task, t) for t in texts])
        assert _genai_greedy(genai_model, prompts, tids, pad, eos) == _edge_greedy(edge, prompts, tids), task
    prompts, tids = _prompts(edge, MIXED)
    assert len(set(map(len, prompts))) > 1 and len(set(tids)) == 3  # padded rows, every task
    got = _genai_greedy(genai_model, prompts, tids, pad, eos)
    assert got == _edge_greedy(edge, prompts, tids)
    assert any(len(t) == MAX_NEW for t in got)  # not all rows ended at once
    # one row alone (batch 1: genai's mask is all ones) gives the row's tokens of the batch
    assert _genai_greedy(genai_model, prompts[1:2], tids[1:2], pad, eos) == got[1:2]


@pytest.fixture(scope="module")
def quantized_bundle(tmp_path_factory, runtime_ckpt_dir):
    """int8 and int4 graphs only (MatMulNBits, GatherBlockQuantized), no fp32 shipped."""
    from alter_edge.testing import build_bundle

    return build_bundle(runtime_ckpt_dir, tmp_path_factory.mktemp("genai-q") / "bundle",
                        int8=True, int4=True, **LIFTED)


def test_genai_config_is_listed_and_taken_from_the_manifest(runtime_bundle, edge_model):
    manifest = json.loads((runtime_bundle / "manifest.json").read_text())
    config = json.loads((runtime_bundle / "genai_config.json").read_text())
    assert {"genai_config.json", "tokenizer_config.json"} <= set(manifest["files"])
    kv, dec = manifest["kv_cache"], config["model"]["decoder"]
    assert dec["filename"] == edge_model.bundle.graph_for(None).path == "model.fp32.onnx"
    assert (dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]) == (
        kv["num_layers"], kv["num_kv_heads"], kv["head_dim"])
    assert dec["inputs"]["past_key_names"] == kv["past_key"].replace("{i}", "%d")
    assert dec["outputs"]["present_value_names"] == kv["present_value"].replace("{i}", "%d")
    m = config["model"]
    assert (m["eos_token_id"], m["pad_token_id"]) == (manifest["eos_token_id"], manifest["pad_token_id"])
    assert m["vocab_size"] == edge_model.runner_for(["echo", "colour"]).vocab_size
    assert config["search"]["max_length"] <= m["context_length"] == kv["max_sequence_length"]
    assert config["search"]["past_present_share_buffer"] is True


@needs_genai
def test_genai_greedy_equals_alter_edge_fp32(runtime_bundle, edge_model):
    _assert_same_tokens(og.Model(str(runtime_bundle)), edge_model)


@needs_genai
def test_genai_runs_a_per_task_graph_by_overlay(runtime_bundle):
    """A per-task graph (no task_ids input: the one set is not fed) gives that task's tokens."""
    cfg = og.Config(str(runtime_bundle))
    cfg.overlay(json.dumps({"model": {"decoder": {"filename": "task-echo.fp32.onnx"}}}))
    own = EdgeModel.load(runtime_bundle, threads=1, tasks=["echo"])  # echo's own graph
    prompts, tids = _prompts(own, [("echo", t) for t in BATCHES["echo"]])
    assert own.runner_for(["echo"]).path.name == "task-echo.fp32.onnx"
    got = _genai_greedy(og.Model(cfg), prompts, tids, own.bundle.pad_id, own.bundle.eos_id)
    assert got == _edge_greedy(own, prompts, tids, task="echo")


@needs_genai
def test_genai_greedy_equals_alter_edge_int8_and_int4(quantized_bundle):
    config = json.loads((quantized_bundle / "genai_config.json").read_text())
    assert config["model"]["decoder"]["filename"] == "model.int8.onnx"  # the runtime's default precision
    _assert_same_tokens(og.Model(str(quantized_bundle)), EdgeModel.load(quantized_bundle, threads=1))
    # another graph of the bundle: an overlay on the config, the bundle left as it is
    cfg = og.Config(str(quantized_bundle))
    cfg.overlay(json.dumps({"model": {"decoder": {"filename": "model.int4.onnx"}}}))
    _assert_same_tokens(og.Model(cfg), EdgeModel.load(quantized_bundle, threads=1, precision="int4"))


@needs_genai
def test_genai_tokenizer_reads_a_bpe_tokenizer_json(runtime_bundle, tmp_path):
    """``og.Tokenizer`` (onnxruntime-extensions) reads a BPE ``tokenizer.json`` with the bundle's
    ``tokenizer_config.json`` and encodes as ``tokenizers`` does (the tiny test bundles' own
    tokenizer is word-level, which onnxruntime-extensions does not read)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path / "b"
    shutil.copytree(runtime_bundle, folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([r["input"] for r in TINY_ROWS],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))
    genai_tok = og.Tokenizer(og.Model(str(folder)))
    for text in ("swap cat dog", "is red a colour?\nAnswer:", "count x x x"):
        ids = tok.encode(text, add_special_tokens=False).ids
        assert list(genai_tok.encode(text)) == ids
        assert genai_tok.decode(np.asarray(ids, dtype=np.int32)) == tok.decode(ids) == text
