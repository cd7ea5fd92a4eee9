"""Export: ONNX graphs with task ids, per-task folding, validation that fails, quantization,
bundles, the CLI. Tiny 2-layer models only (each graph export takes a few seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY_ROWS, make_tiny_base, make_tiny_checkpoint, train_tiny_base

pytest.importorskip("onnxscript")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def arch_base(request, tmp_path_factory, tiny_tokenizer_dir):
    d = tmp_path_factory.mktemp(f"xbase-{request.param}")
    make_tiny_base(request.param, d, tiny_tokenizer_dir, num_layers=2)
    return request.param, d


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    from alter_edge.data import write_jsonl

    p = tmp_path_factory.mktemp("xdata") / "data.jsonl"
    write_jsonl(p, TINY_ROWS)
    return p


def _opts(**kw):
    from alter_edge.export.pipeline import ExportOptions

    kw.setdefault("progress", False)
    kw.setdefault("atol", 1e-4)  # tiny models must meet the 1e-4 aim
    return ExportOptions(**kw)


def _validation(bundle: Path) -> dict:
    return json.loads((bundle / "validation.json").read_text())


@pytest.fixture(scope="module")
def lora_bundle(arch_base, tmp_path_factory, data_file):
    """A lora checkpoint exported with per-task graphs for two of its three tasks."""
    from alter_edge.export.pipeline import export_checkpoint

    arch, base = arch_base
    root = tmp_path_factory.mktemp(f"lora-{arch}")
    ck = make_tiny_checkpoint(root / "ck", base, "lora", num_top_layers=2)
    export_checkpoint(ck, root / "bundle", _opts(tasks="parity,echo", data=data_file))
    return arch, base, ck, root / "bundle"


def test_lora_all_tasks_validated(lora_bundle):
    _arch, _base, _ck, bundle = lora_bundle
    from alter_edge.export.bundle import verify_bundle

    manifest = verify_bundle(bundle)
    paths = {g["path"]: g for g in manifest["graphs"]}
    assert set(paths) == {"model.onnx", "tasks/echo/model.onnx", "tasks/parity/model.onnx"}
    assert paths["model.onnx"]["task"] is None and "task_ids" in paths["model.onnx"]["inputs"]
    assert "task_ids" not in paths["tasks/echo/model.onnx"]["inputs"]
    v = _validation(bundle)
    assert v["passed"] and v["atol"] == 1e-4
    torch_cases = {c["case"] for c in v["checks"] if c["check"] == "onnx_vs_torch"}
    assert torch_cases == {"colour", "echo", "parity", "mixed"}
    for c in v["checks"]:
        if "max_abs_diff" in c:
            assert c["max_abs_diff"] <= 1e-4 and c["tokens_equal"] and c["greedy_steps"] >= 16
    assert {c["graph"] for c in v["checks"] if c["check"] == "task_vs_multitask"} == {
        "tasks/echo/model.onnx", "tasks/parity/model.onnx"}
    assert v["optimization"]["model.onnx"]["nodes_after"] <= v["optimization"]["model.onnx"]["nodes_before"]


def test_lora_task_graph_has_base_ops_and_parameter_count(lora_bundle, tmp_path):
    """A merged lora graph is the base model: same operator multiset, same weight count."""
    import torch
    from transformers import AutoModelForCausalLM

    from alter_edge.export.onnx_export import export_graph
    from alter_edge.export.optimize import graph_parameters, op_counts, optimize_graph

    _arch, base_dir, _ck, bundle = lora_bundle
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    export_graph(base, tmp_path / "base.raw.onnx", multitask=False)
    optimize_graph(tmp_path / "base.raw.onnx", tmp_path / "base.onnx")
    task_graph = bundle / "tasks/echo/model.onnx"
    assert op_counts(task_graph) == op_counts(tmp_path / "base.onnx")
    assert graph_parameters(task_graph) == graph_parameters(tmp_path / "base.onnx")
    assert graph_parameters(bundle / "model.onnx") > graph_parameters(task_graph)  # adapters live there
    spec = _validation(bundle)["specialization"]["echo"]
    assert spec["parameters"] == sum(p.numel() for p in base.parameters())


def test_mixed_batch_equals_rows_alone_and_task_graph(lora_bundle):
    """A mixed-task batch row equals that row run alone, and equals the per-task graph."""
    from alter_edge.export.ortgraph import OrtGraph, left_pad_np

    _arch, _base, ck, bundle = lora_bundle
    tasks = json.loads((ck / "tasks.json").read_text())["tasks"]
    pad = json.loads((bundle / "manifest.json").read_text())["pad_token_id"]
    multi = OrtGraph(bundle / "model.onnx")
    by_name = {t["name"]: t["id"] for t in tasks}
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [7, 8, 9, 10]]
    tids = [by_name["parity"], by_name["echo"], by_name["parity"]]
    ids, mask = left_pad_np(prompts, pad)
    mixed = multi.prompt_logits(ids, mask, np.array(tids))
    for i, (p, t) in enumerate(zip(prompts, tids, strict=True)):
        a_ids, a_mask = left_pad_np([p], pad)
        alone = multi.prompt_logits(a_ids, a_mask, np.array([t]))[0]
        n = len(p)
        np.testing.assert_allclose(mixed[i, -n:], alone[-n:], atol=1e-4)
        name = next(x["name"] for x in tasks if x["id"] == t)
        single = OrtGraph(bundle / f"tasks/{name}/model.onnx").prompt_logits(a_ids, a_mask, None)[0]
        np.testing.assert_allclose(single[-n:], alone[-n:], atol=1e-4)
    # the tasks really differ (the test could fail): parity vs echo on the same row
    other = multi.prompt_logits(*left_pad_np([prompts[0]], pad), np.array([tids[1]]))[0]
    assert np.abs(other[-6:] - mixed[0, -6:]).max() > 1e-3


@pytest.mark.parametrize("kind", ["lora", "ffn", "bottleneck", "lora+attn"])
def test_fold_equals_mta_model_in_torch(arch_base, kind, tmp_path):
    """Folding a task (merge / concat experts / fold into up projection) keeps the logits."""
    import torch

    from alter_edge.export.specialize import specialize
    from alter_edge.training.checkpoint import load_checkpoint

    _arch, base = arch_base
    ck = load_checkpoint(make_tiny_checkpoint(tmp_path / "ck", base, kind, num_top_layers=2))
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    mask = (ids != 0).long()
    outs = []
    for t in range(len(ck.tasks)):
        folded, report = specialize(ck.model, t, prune_threshold=0.0)
        with torch.no_grad():
            ref = ck.model(ids, mask, torch.tensor([t, t])).logits
            got = folded(input_ids=ids, attention_mask=mask).logits
        assert (ref - got)[mask.bool()].abs().max() < 1e-5
        outs.append(got)
        if kind.startswith("lora"):  # merged away: the plain base architecture is left
            from alter_edge.mta import MixedLoRA, MTABlock

            assert not any(isinstance(m, (MixedLoRA, MTABlock)) for m in folded.modules())
            n_attn = sum("attn" in name for b in report.blocks.values() for name in b["merged"])
            assert (n_attn > 0) == kind.endswith("+attn")
        if kind == "ffn":  # all experts kept: one MLP K times as wide
            assert all(b["intermediate_size"] > 0 and not b["pruned"] for b in report.blocks.values())
    assert (outs[0] - outs[1]).abs().max() > 1e-3  # tasks differ, so the test can fail


# Per-task graphs for the Conv1D (gpt2) and Linear (llama) layouts of each kind; the other
# pairs export the multi-task graph only (each graph export costs seconds).
KIND_TASKS = {("llama", "ffn"): "echo", ("gpt2", "ffn"): None,
              ("llama", "bottleneck"): None, ("gpt2", "bottleneck"): "echo"}


@pytest.mark.parametrize("kind", ["ffn", "bottleneck"])
def test_ffn_and_bottleneck_export(arch_base, kind, tmp_path, data_file):
    from alter_edge.export.pipeline import export_checkpoint

    arch, base = arch_base
    tasks = KIND_TASKS[(arch, kind)]
    ck = make_tiny_checkpoint(tmp_path / "ck", base, kind, num_top_layers=2)
    # nothing is negligible in these random mixtures: the fold must match the multi-task graph
    export_checkpoint(ck, tmp_path / "b", _opts(tasks=tasks, data=data_file, prune_threshold=1e-6))
    v = _validation(tmp_path / "b")
    assert v["passed"]
    assert {c["case"] for c in v["checks"] if c["check"] == "onnx_vs_torch"} == {"colour", "echo", "parity", "mixed"}
    if tasks:
        assert {c["check"] for c in v["checks"]} == {"onnx_vs_torch", "optimized_vs_raw", "task_vs_multitask"}
        blocks = v["specialization"]["echo"]["blocks"]
        assert len(blocks) == 2 and all("kept" in b and "pruned" in b for b in blocks.values())


def test_pruning_too_much_fails_and_leaves_no_bundle(arch_base, tmp_path):
    """Pruning adapters that matter breaks task-vs-multitask parity: the export must fail."""
    from alter_edge.export.pipeline import export_checkpoint
    from alter_edge.export.validate import ExportValidationError

    arch, base = arch_base
    if arch != "llama":
        pytest.skip("one architecture is enough for the failure path")
    ck = make_tiny_checkpoint(tmp_path / "ck", base, "bottleneck", num_top_layers=2)
    with pytest.raises(ExportValidationError, match="task_vs_multitask failed for tasks/parity"):
        export_checkpoint(ck, tmp_path / "b", _opts(tasks="parity", prune_threshold=0.3))
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".b.*"))  # no temp dir left either


@pytest.fixture(scope="module")
def trained_ck(arch_base, tmp_path_factory):
    arch, base = arch_base
    root = tmp_path_factory.mktemp(f"trained-{arch}")
    tb = root / "base"
    shutil.copytree(base, tb)
    train_tiny_base(tb)
    return make_tiny_checkpoint(root / "ck", tb, "lora", init_std=0.02, num_top_layers=2)


@pytest.mark.parametrize("method", ["blockwise", "dynamic"])
def test_int8_int4_within_budget(trained_ck, tmp_path, data_file, method):
    import onnx

    from alter_edge.export.pipeline import export_checkpoint
    from alter_edge.export.quantize import weight_matmuls

    export_checkpoint(trained_ck, tmp_path / "b", _opts(tasks=None, int8=True, int4=(method == "dynamic"),
                                                         int8_method=method, data=data_file, block_size=16))
    v = _validation(tmp_path / "b")
    q = [c for c in v["checks"] if c["check"] == "quantized_vs_fp32" and c["passed"]]
    assert {c["precision"] for c in q} == ({"int8", "int4"} if method == "dynamic" else {"int8"})
    for c in q:
        assert max(c["metric_drop_points"].values()) <= c["budget_points"]
        assert c["top1_agreement"] >= c["min_top1"]
        assert set(c["metric_reference"].values()) == {"held-out targets"}
    int8 = tmp_path / "b" / "model.int8.onnx"
    model = onnx.load(str(int8))
    ops = {n.op_type for n in model.graph.node}
    if method == "dynamic":
        assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    else:
        assert not ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
        bits = {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
        assert bits == {8}
        int8_tables = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
        assert int8_tables  # the embedding rows
    assert v["quantization"]["model.int8.onnx"]["embeddings_quantized"]
    kept = set(v["quantization"]["model.int8.onnx"]["kept_fp32"])
    # nothing large escaped (tied lm_head included). A kept fp32 matmul may be fused after
    # quantization and renamed "<name>/MatMulScaleFusion/" by onnxruntime's optimizer; which
    # matmuls the ladder keeps depends on the CPU's int8 kernels (AVX2 kept node_linear_3)
    assert {n.split("/")[0] for n in weight_matmuls(int8)} <= kept
    if method == "dynamic":
        assert v["quantization"]["model.int4.onnx"]["embeddings_quantized"]  # GatherBlockQuantized
        int4_ops = {n.op_type for n in onnx.load(str(tmp_path / "b" / "model.int4.onnx")).graph.node}
        assert "MatMulNBits" in int4_ops
        assert weight_matmuls(tmp_path / "b" / "model.int4.onnx") == []


def test_int8_embedding_rows_keep_each_rows_precision():
    """Per-row scales: a row 1000x smaller than another is still quantized to within half its own
    step (a per-tensor scale would round it to zero), and the rewritten graph gathers the same rows."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from alter_edge.export.quantize import _int8_embedding_rows

    rng = np.random.default_rng(0)
    table = rng.standard_normal((64, 32)).astype(np.float32)
    table[3] *= 1e-3
    g = helper.make_graph([helper.make_node("Gather", ["emb", "ids"], ["y"], name="embed")], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(table, "emb")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    assert _int8_embedding_rows(model) == 1
    assert {i.name for i in model.graph.initializer} == {"emb__int8", "emb__row_scale"}
    ids = np.array([[3, 0, 63, 3]], np.int64)
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    ref = table[ids]
    step = np.abs(ref).max(axis=-1, keepdims=True) / 127
    assert np.all(np.abs(out - ref) <= step / 2 + 1e-9)
    assert np.abs(out[0, 0]).max() > 0  # the small row survived


def test_escape_check_names_unquantized_matmul(tmp_path):
    """A Gemm / transposed tied weight that a quantizer skipped is reported, not ignored."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from alter_edge.export.quantize import (
        QuantizationError,
        check_all_quantized,
        prepare_for_quantization,
    )

    w = numpy_helper.from_array(np.ones((64, 32), np.float32), "emb")
    g = helper.make_graph(
        [helper.make_node("Transpose", ["emb"], ["embT"], name="t"),
         helper.make_node("MatMul", ["x", "embT"], ["y"], name="lm_head"),
         helper.make_node("Gemm", ["y", "emb"], ["z"], name="gemm")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 32])], [w])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    with pytest.raises(QuantizationError, match="lm_head"):
        check_all_quantized(src, set(), "int8")
    info = prepare_for_quantization(src, tmp_path / "p.onnx")
    assert info == {"gemm_to_matmul": 1, "untied_transposed_weights": 1}
    ops = [n.op_type for n in onnx.load(str(tmp_path / "p.onnx")).graph.node]
    assert "Gemm" not in ops and ops.count("MatMul") == 2
    assert "Transpose" not in ops  # the untied weight's Transpose is gone, not left dangling


# -- CLI and bad input -------------------------------------------------------------------

def _run(args):
    from click.testing import CliRunner

    from alter_edge.cli import main

    return CliRunner().invoke(main, args)


def test_cli_export_inspect_and_tamper(lora_bundle, tmp_path):
    arch, _base, ck, _ = lora_bundle
    if arch != "gpt2":
        pytest.skip("the CLI is architecture-independent")
    out = tmp_path / "bundle"
    r = _run(["export", str(ck), "--out", str(out), "--task", "none", "--ort-format", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "model.onnx" in r.output and "checks passed" in r.output
    assert (out / "model.ort").is_file() and (out / "required_operators.config").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graphs"][0]["ort"] == "model.ort" and "model.ort" in manifest["files"]
    r = _run(["inspect", str(out)])
    assert r.exit_code == 0 and "hashes: ok" in r.output and "model.onnx" in r.output
    # existing --out without --overwrite: one clear line
    r = _run(["export", str(ck), "--out", str(out), "--task", "none"])
    assert r.exit_code == 1 and "already exists" in r.output and "--overwrite" in r.output
    # a changed file is named
    with open(out / "tasks.json", "a") as f:
        f.write(" ")
    r = _run(["inspect", str(out)])
    assert r.exit_code == 1 and "file tasks.json does not match manifest.json" in r.output
    assert "Traceback" not in r.output


def test_cli_bad_inputs(lora_bundle, tmp_path):
    _arch, _base, ck, _ = lora_bundle
    r = _run(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "checkpoint not found" in r.output
    broken = tmp_path / "broken"
    shutil.copytree(ck, broken)
    (broken / "adapters.safetensors").unlink()
    r = _run(["export", str(broken), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "missing adapters.safetensors" in r.output
    r = _run(["export", str(ck), "--out", str(tmp_path / "o"), "--task", "sentiment"])
    assert r.exit_code == 1 and "unknown task 'sentiment'" in r.output and "colour" in r.output
    other = tmp_path / "other"
    shutil.copytree(ck, other)
    meta = json.loads((other / "base_model.json").read_text())
    meta["sha256"] = "0" * 64
    (other / "base_model.json").write_text(json.dumps(meta))
    r = _run(["export", str(other), "--out", str(tmp_path / "o"), "--task", "none"])
    assert r.exit_code == 1 and "was trained on base model" in r.output
    assert not (tmp_path / "o").exists()
    r = _run(["inspect", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "bundle not found" in r.output


def test_optimize_keeps_tied_embedding_shared(tmp_path):
    """lm_head = MatMul(x, Transpose(embedding)): optimizing must not store a transposed copy."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from alter_edge.export.optimize import optimize_graph

    emb = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["h"], name="embed"),
         helper.make_node("Transpose", ["emb"], ["embT"], name="t", perm=[1, 0]),
         helper.make_node("MatMul", ["h", "embT"], ["logits"], name="lm_head")],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3, 64])], [numpy_helper.from_array(emb, "emb")])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    info = optimize_graph(src, tmp_path / "o.onnx")
    assert info["tied_weights_kept_shared"] == 1
    out = onnx.load(str(tmp_path / "o.onnx"))
    assert sum(int(np.prod(i.dims)) for i in out.graph.initializer) == emb.size
    ids = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    got = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(got, emb[ids] @ emb.T, rtol=1e-5, atol=1e-5)


def test_summary_groups_consecutive_blocks_folded_alike():
    from alter_edge.cli.export import summary_lines

    merged = {"merged": ["mlp.up_proj", "self_attn.q_proj"], "mixture": [1.0]}
    blocks = {"10": merged, "11": merged, "12": {"kept": 2, "pruned": 3}, "13": merged, "15": merged}
    validation = {"specialization": {"nli": {"kind": "lora", "blocks": blocks, "parameters": 1234}}, "checks": []}
    task_line = summary_lines({"graphs": []}, validation)[0]
    assert task_line == ("task nli (lora): blocks 10-11: merged mlp.up_proj,self_attn.q_proj; "
                         "block 12: kept 2 pruned 3; block 13: merged mlp.up_proj,self_attn.q_proj; "
                         "block 15: merged mlp.up_proj,self_attn.q_proj; 1,234 parameters")
