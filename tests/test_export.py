"""Export (bundle format v2): graphs built from the checkpoint's tensors, against PyTorch; one
copy of the base weights per precision; the fused operators; quantized graphs; the CLI.
Tiny 2-layer models only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from alter_edge.errors import ConfigError
from alter_edge.testing import TINY_ROWS, make_tiny_base, make_tiny_checkpoint

LIFTED = dict(int8_budget=100.0, int4_budget=100.0, min_top1_int8=0.0, min_top1_int4=0.0)  # random models


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_tokenizer_dir):
    d = tmp_path_factory.mktemp("xbase")
    make_tiny_base("llama", d, tiny_tokenizer_dir, num_layers=2)
    return d


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    from alter_edge.data import write_jsonl

    p = tmp_path_factory.mktemp("xdata") / "data.jsonl"
    write_jsonl(p, TINY_ROWS)
    return p


def _opts(**kw):
    from alter_edge.export.pipeline import ExportOptions

    kw.setdefault("progress", False)
    kw.setdefault("atol", 1e-4)
    return ExportOptions(**kw)


def _validation(bundle: Path) -> dict:
    return json.loads((bundle / "validation.json").read_text())


@pytest.fixture(scope="module")
def int8_bundle(base_dir, tmp_path_factory, data_file):
    """lora + attention adapters, every task, int8 and int4 only (no fp32 shipped)."""
    from alter_edge.export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("lora")
    ck = make_tiny_checkpoint(root / "ck", base_dir, "lora+attn", num_top_layers=2)
    manifest = export_checkpoint(ck, root / "bundle", _opts(tasks="all", int8=True, int4=True, data=data_file,
                                                            **LIFTED))
    return ck, root / "bundle", manifest


def test_every_graph_checked_against_pytorch_and_fp32_dropped(int8_bundle):
    ck, bundle, manifest = int8_bundle
    v = _validation(bundle)
    assert v["passed"]
    parity = [c for c in v["checks"] if c["check"] == "fp32_vs_torch"]
    # the fp32 multi-task graph on every task and the mixed batch
    assert {(c["graph"], c["case"]) for c in parity} == {("model.fp32.onnx", t) for t in
                                                         ("colour", "echo", "parity", "mixed")}
    assert all(c["tokens_equal"] and c["max_abs_diff"] < 1e-4 for c in parity)
    # each quantized per-task graph equals its quantized multi-task graph on its task
    folded = [c for c in v["checks"] if c["check"] == "task_vs_multitask"]
    assert {c["graph"] for c in folded} == {f"task-{t}.{p}.onnx" for t in ("colour", "echo", "parity")
                                           for p in ("int8", "int4")}
    assert all(c["passed"] for c in folded)
    # only the precisions asked for are shipped; the fp32 reference is gone
    assert {g["precision"] for g in manifest["graphs"]} == {"int8", "int4"}
    assert not list(bundle.glob("*fp32*"))
    q = [c for c in v["checks"] if c["check"] == "quantized_vs_fp32"]
    assert len(q) == 2 * 4 and all("metric_drop_interval95" in c for c in q)
    assert manifest["format_version"] == 2 and manifest["graph_contract"] == "gqa-right-pad"


def test_one_copy_of_the_weights_per_precision(int8_bundle):
    _ck, bundle, manifest = int8_bundle
    for precision in ("int8", "int4"):
        graphs = [g for g in manifest["graphs"] if g["precision"] == precision]
        assert len(graphs) == 4 and all(g["external_data"] == [f"weights.{precision}.bin"] for g in graphs)
        weights = (bundle / f"weights.{precision}.bin").stat().st_size
        # each graph file holds only its own small tensors: all of them together are a fraction
        # of the shared weights, so the bundle is ~one copy, not one per graph
        assert sum(g["bytes"] for g in graphs) < 0.5 * weights
    assert set(manifest["files"]) >= {"weights.int8.bin", "weights.int4.bin", "tokenizer.json", "tasks.json"}


def test_fused_operators_and_no_decomposed_attention(int8_bundle):
    _ck, bundle, _ = int8_bundle
    nodes = onnx.load(bundle / "model.int8.onnx", load_external_data=False).graph.node
    ops = {n.op_type for n in nodes}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization", "MatMulNBits",
            "GatherBlockQuantized", "QuickGelu"} <= ops
    assert not ops & {"Softmax", "MatMul", "Pow", "ReduceMean", "Transpose", "Sin", "Cos"}
    # the only Concats join an adapted projection's input with its adapters' m * A x, read by one
    # MatMulNBits over [W | B]: base and delta in one matmul, no Add after it
    consumers = {i: n for n in nodes for i in n.input}
    concats = [n for n in nodes if n.op_type == "Concat"]
    assert concats and all(consumers[c.output[0]].op_type == "MatMulNBits" for c in concats)
    assert not any(n.op_type == "Add" for n in nodes)
    int4 = onnx.load(bundle / "model.int4.onnx", load_external_data=False).graph.node
    # int4: the 4-bit B joins the 4-bit base the same way (adapter_bits defaults to the graph's)
    consumers4 = {i: n for n in int4 for i in n.input}
    assert sum(n.op_type == "Concat" for n in int4) == len(concats)
    assert all(consumers4[n.output[0]].op_type == "MatMulNBits" for n in int4 if n.op_type == "Concat")
    assert not any(n.op_type == "Add" for n in int4)
    task_graph = onnx.load(bundle / "task-echo.int8.onnx", load_external_data=False).graph
    assert "task_ids" not in {i.name for i in task_graph.input}
    # no mixture gathered: the two Gathers left read the mask's width and the step's length
    assert sum(n.op_type == "Gather" for n in task_graph.node) == 2
    # the multi-task graph gathers every block's mixture at once: one Gather of a mixture table
    # (beside the two of the mask's width and the step's length), split per side path
    multi = onnx.load(bundle / "model.int8.onnx", load_external_data=False).graph
    assert sum(n.op_type == "Gather" for n in multi.node) == 3
    assert [n.op_type for n in multi.node[:2]] == ["Gather", "Split"]
    bits = {a.i for n in onnx.load(bundle / "model.int4.onnx", load_external_data=False).graph.node
            if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert 4 in bits


def test_int4_with_8_bit_adapters_adds_their_delta_apart(base_dir, tmp_path, data_file):
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    with pytest.raises(ConfigError, match="adapter bits must be 4, 8 or None"):
        ExportOptions(adapter_bits=2)
    ck = make_tiny_checkpoint(tmp_path / "ck", base_dir, "lora+attn", num_top_layers=2)
    export_checkpoint(ck, tmp_path / "b", _opts(tasks="echo", int4=True, adapter_bits=8, data=data_file, **LIFTED))
    v = _validation(tmp_path / "b")
    assert all(c["passed"] for c in v["checks"])
    for graph in ("model.int4.onnx", "task-echo.int4.onnx"):
        nodes = onnx.load(tmp_path / "b" / graph, load_external_data=False).graph.node
        bits = {a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
        assert bits == {4, 8}
        assert not any(n.op_type == "Concat" for n in nodes) and any(n.op_type == "Add" for n in nodes)


def test_quantized_graphs_load_and_generate_mixed_batches(int8_bundle):
    from alter_edge.runtime import EdgeModel

    _ck, bundle, _ = int8_bundle
    for precision in ("int8", "int4"):
        m = EdgeModel.load(bundle, precision=precision, threads=1)
        texts, tasks = ["repeat cat dog", "is red a colour", "hello there"], ["echo", "colour", "parity"]
        mixed = m.generate(texts, tasks=tasks, max_new_tokens=4)
        assert all(len(g.token_ids) <= 4 for g in mixed)
        assert m.classify("is red a colour", task="colour").label in m.tasks.get("colour").labels


@pytest.mark.parametrize("kind", ["lora", "ffn", "bottleneck"])
def test_each_adapter_kind_builds_and_matches_pytorch(base_dir, tmp_path, kind, data_file):
    from alter_edge.export.pipeline import export_checkpoint

    ck = make_tiny_checkpoint(tmp_path / "ck", base_dir, kind, num_top_layers=2)
    manifest = export_checkpoint(ck, tmp_path / "b", _opts(tasks="all", data=data_file))
    parity = [c for c in _validation(tmp_path / "b")["checks"] if c["check"] == "fp32_vs_torch"]
    assert parity and all(c["passed"] for c in parity)
    assert {g["mode"] for g in manifest["graphs"]} == {"multitask", "task"}


def test_merged_single_task_graph_has_no_adapter_ops(base_dir, tmp_path):
    from alter_edge.export.pipeline import export_checkpoint
    from alter_edge.runtime import EdgeModel

    ck = make_tiny_checkpoint(tmp_path / "ck", base_dir, "lora+attn", num_top_layers=2)
    manifest = export_checkpoint(ck, tmp_path / "b", _opts(tasks="echo", merged=True))
    merged = next(g for g in manifest["graphs"] if g["task"] == "echo")
    assert merged["mode"] == "merged" and merged["external_data"] == []
    v = _validation(tmp_path / "b")
    assert all(c["passed"] for c in v["checks"] if c["graph"] == merged["path"])
    ops = v["build"][merged["path"]]["operators"]
    assert ops["MatMul"] == 2 * 4 + 1  # qkv, o, gate_up, down per layer + lm_head: the base's
    assert "Mul" in ops and ops["Mul"] == 2  # SiLU's gate x up only, no adapter scaling
    m = EdgeModel.load(tmp_path / "b", tasks=["echo"], threads=1)
    assert m.runner_for(["echo"]).path.name == merged["path"]


def test_mixed_batch_rows_equal_their_own_runs(int8_bundle):
    from alter_edge.runtime import EdgeModel

    _ck, bundle, _ = int8_bundle
    m = EdgeModel.load(bundle, precision="int8", threads=1)
    texts = ["repeat cat dog bird", "is red a colour", "hello", "repeat dog"]
    tasks = ["echo", "colour", "parity", "echo"]
    mixed = m.generate(texts, tasks=tasks, max_new_tokens=5)
    multi = m.runner_for(tasks)
    for t, k, g in zip(texts, tasks, mixed, strict=True):
        from alter_edge.runtime.generate import SamplingParams, decode

        prompt = m.encode(t, k)[0]
        alone = [tok for _, tok in decode(multi, [prompt], [m.tasks.id_of(k)], m.bundle.eos_id, m.bundle.pad_id,
                                          SamplingParams(max_new_tokens=5))]
        assert alone == g.token_ids


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral"])
def test_llama_family_variants_match_pytorch(arch, tiny_tokenizer_dir, tmp_path):
    """q/k/v bias (qwen2), per-head q/k RMSNorm (qwen3), a sliding window (mistral)."""
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config, Qwen3Config

    from alter_edge.export.builder import BuildSpec, DecoderBuilder
    from alter_edge.export.validate import forced_logits
    from alter_edge.runtime.session import GraphRunner, session_options

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
    cfg = {"qwen2": lambda: Qwen2Config(**common), "qwen3": lambda: Qwen3Config(**common),
           "mistral": lambda: MistralConfig(**common, sliding_window=4)}[arch]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    b = DecoderBuilder(model)
    b.build(tmp_path / "g.onnx", BuildSpec("task"), "fp32", None)
    r = GraphRunner(tmp_path / "g.onnx", b.kv, session_options(1), ["CPUExecutionProvider"])
    prompts, forced = [[1, 5, 9, 3, 7, 2, 8], [4, 4, 6]], [[3, 9, 2, 5], [8, 1, 1, 7]]
    got = forced_logits(r, prompts, [0, 0], 0, forced)  # the prompt step, then decode steps
    with torch.no_grad():
        for p, f, g in zip(prompts, forced, got, strict=True):
            ref = model(torch.tensor([p + f[:-1]])).logits[0, len(p) - 1:].numpy()
            assert g.shape == ref.shape and np.abs(ref - g).max() < 1e-4


def test_a_family_the_builder_does_not_write_is_refused_with_the_families():
    from transformers import OPTConfig, OPTForCausalLM

    from alter_edge.errors import ConfigError
    from alter_edge.export.builder import SUPPORTED, DecoderBuilder

    opt = OPTForCausalLM(OPTConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                   num_attention_heads=2, word_embed_proj_dim=16))
    with pytest.raises(ConfigError, match="not 'opt'") as err:
        DecoderBuilder(opt)
    assert all(f in str(err.value) for f in SUPPORTED) and "gpt2" in SUPPORTED


def test_a_prompt_budget_past_the_positions_is_refused_before_building(tiny_tokenizer_dir, tmp_path):
    """GPT-2's learned positions end at n_positions: a checkpoint whose max_prompt_tokens fills
    them leaves no room for an answer, and the export says so before building anything."""
    from alter_edge.errors import ConfigError
    from alter_edge.export.pipeline import export_checkpoint

    base = make_tiny_base("gpt2", tmp_path / "base", tiny_tokenizer_dir, num_layers=2)  # 256 positions
    ck = make_tiny_checkpoint(tmp_path / "ck", base, "lora", num_top_layers=2)
    with pytest.raises(ConfigError, match="max_prompt_tokens 256 .* 256 positions"):
        export_checkpoint(ck, tmp_path / "b", _opts(tasks=None))
    assert not (tmp_path / "b").exists()


def test_v1_bundle_is_refused_with_re_export_advice(int8_bundle, tmp_path):
    from alter_edge.errors import BundleError
    from alter_edge.runtime import EdgeModel

    _ck, bundle, _ = int8_bundle
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format_version 1 .* re-export the checkpoint"):
        EdgeModel.load(old)


def test_tampered_weight_file_is_caught_when_its_graph_opens(int8_bundle, tmp_path):
    from alter_edge.errors import BundleError
    from alter_edge.runtime import EdgeModel

    _ck, bundle, _ = int8_bundle
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    with open(b / "weights.int4.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    EdgeModel.load(b, precision="int8", threads=1)  # int8 reads another file
    with pytest.raises(BundleError, match="file weights.int4.bin does not match manifest"):
        EdgeModel.load(b, precision="int4", threads=1)


# -- CLI and bad input -------------------------------------------------------------------

def _run(args):
    from click.testing import CliRunner

    from alter_edge.cli import main

    return CliRunner().invoke(main, args)


def test_cli_export_inspect_and_tamper(base_dir, tmp_path):
    ck = make_tiny_checkpoint(tmp_path / "ck", base_dir, "lora", num_top_layers=2)
    out = tmp_path / "bundle"
    r = _run(["export", str(ck), "--out", str(out), "--task", "all", "--int8", "--int8-budget", "100",
              "--int8-min-top1", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "model.int8.onnx" in r.output and "weights.int8.bin" in r.output and "checks passed" in r.output
    r = _run(["inspect", str(out)])
    assert r.exit_code == 0 and "hashes: ok" in r.output and "task-echo.int8.onnx" in r.output
    r = _run(["export", str(ck), "--out", str(out), "--task", "none"])
    assert r.exit_code == 1 and "already exists" in r.output
    with open(out / "tasks.json", "a") as f:
        f.write(" ")
    r = _run(["inspect", str(out)])
    assert r.exit_code == 1 and "file tasks.json does not match manifest.json" in r.output
    assert "Traceback" not in r.output


def test_cli_bad_inputs(base_dir, tmp_path):
    ck = make_tiny_checkpoint(tmp_path / "ck", base_dir, "lora", num_top_layers=2)
    r = _run(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "checkpoint not found" in r.output
    broken = tmp_path / "broken"
    shutil.copytree(ck, broken)
    (broken / "adapters.safetensors").unlink()
    r = _run(["export", str(broken), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "missing adapters.safetensors" in r.output
    r = _run(["export", str(ck), "--out", str(tmp_path / "o"), "--task", "sentiment"])
    assert r.exit_code == 1 and "unknown task 'sentiment'" in r.output and "colour" in r.output
    assert not (tmp_path / "o").exists()
    r = _run(["inspect", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "bundle not found" in r.output


def test_quantize_blockwise_round_trip():
    from alter_edge.export.graph import quantize_blockwise

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 70)).astype(np.float32)  # K not a multiple of the block
    for bits, tol in ((8, 0.02), (4, 0.35)):
        q = quantize_blockwise(w, bits, 32)
        assert q.data.shape == (8, 3, 32 * bits // 8)
        err = np.abs(q.dequantize() - w).max()
        assert err < tol * np.abs(w).max()


def test_quantized_answers_do_not_depend_on_the_batch(int8_bundle):
    """A row gets the same label scores and tokens alone as in a padded batch of other rows."""
    from alter_edge.runtime import EdgeModel

    _ck, bundle, _ = int8_bundle
    texts = ["is red a colour", "repeat cat dog bird fish", "hello", "is the sky blue today or not"]
    for precision in ("int8", "int4"):
        m = EdgeModel.load(bundle, precision=precision, threads=2)
        alone = [m.classify(t, task="colour").scores for t in texts]
        batch = [c.scores for c in m.classify(texts, task="colour")]
        assert max(abs(a[k] - b[k]) for a, b in zip(alone, batch, strict=True) for k in a) < 1e-5
        mixed = m.generate(texts, tasks=["echo", "colour", "parity", "echo"], max_new_tokens=8)
        for t, task, g in zip(texts, ["echo", "colour", "parity", "echo"], mixed, strict=True):
            assert m.generate(t, task=task, max_new_tokens=8).token_ids == g.token_ids


def test_quantized_refill_and_batched_labels_equal_their_own_runs(int8_bundle):
    """int8/int4 graphs: refilled slots give each row its own tokens; label scores batched over
    labels equal label after label."""
    from alter_edge.runtime import EdgeModel
    from alter_edge.runtime.generate import SamplingParams, decode
    from alter_edge.runtime.scoring import score_labels

    _ck, bundle, _ = int8_bundle
    texts = ["is red a colour", "repeat cat dog bird fish", "hello", "is the sky blue today or not",
             "repeat dog", "count x x x"]
    tasks = ["colour", "echo", "parity", "echo", "echo", "parity"]
    for precision in ("int8", "int4"):
        m = EdgeModel.load(bundle, precision=precision, threads=2)
        alone = [m.generate(t, task=k, max_new_tokens=3 + 2 * i).token_ids
                 for i, (t, k) in enumerate(zip(texts, tasks, strict=True))]
        prompts = [m.encode(t, k)[0] for t, k in zip(texts, tasks, strict=True)]
        got: list[list[int]] = [[] for _ in texts]
        params = [SamplingParams(max_new_tokens=3 + 2 * i) for i in range(len(texts))]
        for i, tok in decode(m.runner_for(tasks), prompts, [m.tasks.id_of(k) for k in tasks], m.bundle.eos_id,
                             m.bundle.pad_id, params, slots=2):
            got[i].append(tok)
        assert got == alone
        runner = m.runner_for(["colour"])
        ids = [m.encode(t, "colour")[0] for t in texts]
        labels = [[5, 1], [6, 7, 1], [8]]
        args = (runner, ids, [m.tasks.id_of("colour")] * len(ids), labels, m.bundle.pad_id)
        np.testing.assert_allclose(score_labels(*args), score_labels(*args, batched=False), atol=1e-5, rtol=0)


def test_quality_gate_fails_a_real_drop_not_noise():
    from alter_edge.export.validate import over_budget, paired_interval

    noise = np.zeros(100)
    noise[:2] = 100.0  # two of 100 answers worse: a 2-point mean, an interval reaching below zero
    lo, hi = paired_interval(noise)
    assert lo < 0 < hi
    real = np.zeros(100)
    real[:10] = 100.0  # ten worse: 10 points, the interval well above zero
    rlo, rhi = paired_interval(real)
    assert over_budget({"a": 2.0, "b": 10.0}, {"a": [lo, hi], "b": [rlo, rhi]}, 1.0) == {"b"}
    assert over_budget({"a": 0.5}, {"a": [0.1, 0.9]}, 1.0) == set()
