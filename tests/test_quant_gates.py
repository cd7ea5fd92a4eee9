"""Quantization held to the real gates: the block-wise quantizer against onnxruntime's own
``MatMulNBits`` and ``GatherBlockQuantized`` kernels (so the byte layout is pinned by
onnxruntime, not by our dequantizer); a tiny model trained until its tasks are learned exports
int8 and int4 under the default ``ExportOptions`` gates; one corrupted packed weight fails them
with a message naming the graph and the task."""

from __future__ import annotations

import random

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from alter_edge.export.graph import MS, OPSET, GraphBuilder, QuantizedMatrix, quantize_blockwise

# -- the quantizer against onnxruntime's kernels -----------------------------------------------


def _session(node, inputs, output, inits) -> ort.InferenceSession:
    g = helper.make_graph([node], "g", inputs, [output], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
    m.ir_version = 10
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def _matmul_nbits(q: QuantizedMatrix, x: np.ndarray) -> np.ndarray:
    """``x @ W^T`` by onnxruntime's MatMulNBits on ``q``'s bytes (and zero points, if any), fp32
    compute (accuracy level 0)."""
    zp = q.packed_zero_points()
    inits = [numpy_helper.from_array(q.data, "B"), numpy_helper.from_array(q.scales.reshape(-1), "scales")]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp.reshape(-1), "zp"))
    node = helper.make_node("MatMulNBits", ["x", "B", "scales"] + (["zp"] if zp is not None else []), ["y"],
                            domain=MS, K=q.K, N=q.N, bits=q.bits, block_size=q.block_size, accuracy_level=0)
    s = _session(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, q.K])],
                 helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, q.N]), inits)
    return s.run(None, {"x": x})[0]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("N", "K", "block_size"), [(24, 64, 32), (8, 48, 16), (40, 96, 32), (5, 40, 32)])
def test_matmul_nbits_reads_our_layout(bits, N, K, block_size, symmetric):
    """onnxruntime's kernel on our bytes equals the numpy matmul on our dequantized weights
    (K=40: a padded last block; K=96: an odd number of blocks, so a row's packed 4-bit zero
    points end in a half byte), and our dequantized weights are the fp32 ones up to the
    quantization step."""
    rng = np.random.default_rng(bits * 1000 + K)
    w = rng.standard_normal((N, K)).astype(np.float32) + (0.0 if symmetric else 0.7)
    x = rng.standard_normal((3, K)).astype(np.float32)
    q = quantize_blockwise(w, bits, block_size, symmetric=symmetric)
    assert (q.zero_points is None) == symmetric
    assert q.data.shape == (N, -(-K // block_size), block_size * bits // 8) and q.data.dtype == np.uint8
    np.testing.assert_allclose(_matmul_nbits(q, x), x @ q.dequantize().T, rtol=1e-5, atol=1e-5)
    step = np.repeat(q.scales, block_size, axis=1)[:, :K]
    assert np.all(np.abs(q.dequantize() - w) <= step / 2 + 1e-6)


def test_matmul_nbits_sees_a_nibble_swap():
    """The check above can fail: the same bytes with each byte's nibbles swapped give other outputs."""
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((16, 64)).astype(np.float32), rng.standard_normal((2, 64)).astype(np.float32)
    q = quantize_blockwise(w, 4, 32)
    swapped = QuantizedMatrix((q.data >> 4) | (q.data << 4), q.scales, 4, 32, 64)
    assert np.abs(_matmul_nbits(swapped, x) - x @ q.dequantize().T).max() > 0.1


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_gather_block_quantized_reads_our_layout(bits, symmetric):
    """The quantized embedding: GatherBlockQuantized on the lm_head's bytes viewed as
    ``[vocab, hidden * bits / 8]`` (and its zero points as ``[vocab, blocks * bits / 8]``)
    returns our dequantized rows."""
    rng = np.random.default_rng(bits)
    V, H, bs = 11, 96, 32
    q = quantize_blockwise(rng.standard_normal((V, H)).astype(np.float32) + 0.5, bits, bs, symmetric=symmetric)
    data_init = numpy_helper.from_array(q.data.reshape(V, -1), "data")  # uint8, as export/builder.py views it
    inits = [data_init, numpy_helper.from_array(q.scales, "scales")]
    if not symmetric:
        inits.append(numpy_helper.from_array(q.packed_zero_points(), "zp"))
    node = helper.make_node("GatherBlockQuantized", ["data", "ids", "scales"] + ([] if symmetric else ["zp"]), ["y"],
                            domain=MS, bits=bits, block_size=bs, quantize_axis=1, gather_axis=0)
    s = _session(node, [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                 helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, H]), inits)
    ids = np.array([0, 3, 10, 3], np.int64)
    np.testing.assert_allclose(s.run(None, {"ids": ids})[0], q.dequantize()[ids], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_lowers_the_output_error_on_its_calibration_inputs(symmetric):
    """GPTQ against round-to-nearest on inputs with correlated channels (as a layer's are): the
    error of ``x W^T`` on those inputs is much lower, the layout is the same (onnxruntime's
    kernel reads it), and it is deterministic."""
    from alter_edge.export.quant import gptq_quantize

    rng = np.random.default_rng(0)
    K, N = 128, 48
    x = (rng.standard_normal((2048, 16)) @ rng.standard_normal((16, K))  # a few directions carry most
         + 0.1 * rng.standard_normal((2048, K))).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    H = x.astype(np.float64).T @ x
    rtn = quantize_blockwise(w, 4, 32, symmetric=symmetric)
    q = gptq_quantize(w, H, 4, 32, symmetric=symmetric)

    def err(m):
        return float(np.linalg.norm(x @ (w - m.dequantize()).T))

    assert err(q) < 0.5 * err(rtn), (err(q), err(rtn))  # measured: 0.28-0.29
    np.testing.assert_allclose(_matmul_nbits(q, x[:4]), x[:4] @ q.dequantize().T, rtol=1e-4, atol=1e-3)
    again = gptq_quantize(w, H, 4, 32, symmetric=symmetric)
    assert np.array_equal(again.data, q.data) and np.array_equal(again.scales, q.scales)


# -- a learned tiny model under the default gates ------------------------------------------------

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird"]


def _learnable_rows(n_per_task: int = 100, seed: int = 1) -> list[dict]:
    """Three tasks a 4-layer, 32-wide model learns in seconds, in the tiny tokenizer's words:
    'colour' and 'sky' (classify yes/no on one word, by different rules, so the task id
    matters) and 'echo' (generate: the two words swapped)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_per_task):
        w = rng.choice(WORDS)
        rows.append({"task": "colour", "input": f"is {w} a colour", "target": "yes" if w in WORDS[:3] else "no"})
        w = rng.choice(WORDS)
        rows.append({"task": "sky", "input": f"what is {w}", "target": "yes" if w in ("sun", "moon", "bird") else "no"})
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        rows.append({"task": "echo", "input": f"swap {a} {b}", "target": f"{b} {a}"})
    return rows


@pytest.fixture(scope="module")
def learned(tmp_path_factory, trainable_llama_dir):
    """A tiny MTA checkpoint trained until every task is learned (dev metric >= 0.9), and its data."""
    from alter_edge.config import TrainConfig
    from alter_edge.data import write_jsonl
    from alter_edge.training.trainer import run_training

    root = tmp_path_factory.mktemp("learned")
    data = root / "data.jsonl"
    write_jsonl(data, _learnable_rows())
    cfg = TrainConfig(base_model=str(trainable_llama_dir), stage1_steps=300, stage2_steps=10, batch_size=16,
                      stage1_lr=5e-3, stage2_lr=5e-2, save_every=1000, dev_fraction=0.1, eval_max_new_tokens=4,
                      compute_dtype="float32", stage2_guard=0.0, mta={"num_top_layers": 4, "adapter_kind": "lora"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALTER_EDGE_CACHE", str(root / "cache"))
        state = run_training(data, root / "ck", cfg, progress=False)
    return root, state


def _export(root, name, **kw):
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    opts = ExportOptions(tasks="all", int8=True, int4=True, progress=False, threads=1, **kw)
    return export_checkpoint(root / "ck", root / name, opts)


def test_learned_model_passes_the_default_gates(learned):
    import json

    from alter_edge.export.pipeline import ExportOptions

    root, state = learned
    dev = state["evals"]["stage2"]
    assert dev["counts"] == {"colour": 10, "echo": 10, "sky": 10}
    assert min(dev["per_task"].values()) >= 0.9, dev  # every task learned
    defaults = ExportOptions()
    manifest = _export(root, "bundle")
    assert {(g["task"], g["precision"]) for g in manifest["graphs"]} == {
        (t, p) for t in (None, "colour", "echo", "sky") for p in ("int8", "int4")}
    report = json.loads((root / "bundle" / "validation.json").read_text())
    quantized = [c for c in report["checks"] if c["check"] == "quantized_vs_fp32"]
    assert len(quantized) == 8 and report["passed"]
    for c in quantized:  # the gates that ran are the defaults, on every dev row of the graph's tasks
        p = c["precision"]
        assert c["min_top1"] == getattr(defaults, f"min_top1_{p}")
        assert c["budget_points"] == getattr(defaults, f"{p}_budget")
        assert all(m["rows"] == 10 for m in c["metric"].values())
        assert all(m[p] >= 0.9 for m in c["metric"].values()), c["metric"]


def _int4_error(root, bundle: str) -> tuple[float, float]:
    """The int4 multi-task graph of ``bundle`` against the fp32 one beside it, on 24 prompts of
    each task of the learned model: (mean KL(fp32 || int4) of the next-token distributions at
    the answer's first token, top-1 agreement along fp32's 4 greedy steps)."""
    import json

    from alter_edge.base_model import load_tokenizer
    from alter_edge.export.pipeline import graph_path
    from alter_edge.export.validate import forced_logits, greedy
    from alter_edge.prompts import encode_prompt
    from alter_edge.runtime.contract import KVLayout
    from alter_edge.runtime.session import GraphRunner, session_options
    from alter_edge.tasks import TaskRegistry

    man = json.loads((root / bundle / "manifest.json").read_text())
    kv = KVLayout.from_dict(man["kv_cache"])
    run = {p: GraphRunner(root / bundle / graph_path(None, p), kv, session_options(1), ["CPUExecutionProvider"])
           for p in ("fp32", "int4")}
    rows = [json.loads(x) for x in (root / "data.jsonl").read_text().splitlines()]
    tok = load_tokenizer(root / bundle)
    tasks = TaskRegistry.load(root / bundle / "tasks.json")
    kls, agree, n = [], 0, 0
    for spec in tasks:
        prompts = [encode_prompt(tok, spec, r["input"], 64)[0] for r in rows if r["task"] == spec.name][:24]
        ids = [spec.id] * len(prompts)
        path = greedy(run["fp32"], prompts, ids, man["pad_token_id"], 4)
        ref = forced_logits(run["fp32"], prompts, ids, man["pad_token_id"], path)
        got = forced_logits(run["int4"], prompts, ids, man["pad_token_id"], path)
        for a, b, t in zip(ref, got, path, strict=True):
            pa = np.exp(a - a.max(-1, keepdims=True))
            pa /= pa.sum(-1, keepdims=True)
            lb = b - b.max(-1, keepdims=True)
            lb = lb - np.log(np.exp(lb).sum(-1, keepdims=True))
            la = np.log(pa + 1e-30)
            kls.append(float((pa * (la - lb)).sum(-1)[0]))  # the answer's first token
            agree += int((b.argmax(-1) == np.asarray(t)).sum())
            n += len(t)
    return float(np.mean(kls)), agree / n


def test_the_default_int4_quantizer_beats_plain_rtn(learned):
    """The same learned model and gates: the default int4 quantizer (calibrated on the
    checkpoint's own train rows) is measurably closer to fp32 than plain symmetric
    round-to-nearest (``--int4-method rtn``, what int4 was before)."""
    import json

    root, _ = learned
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    for name, kw in (("q-default", {}), ("q-rtn", dict(int4_method="rtn", int4_zero_points=False))):
        export_checkpoint(root / "ck", root / name, ExportOptions(tasks=None, fp32=True, int4=True, progress=False,
                                                                  threads=1, **kw))
    new, rtn = _int4_error(root, "q-default"), _int4_error(root, "q-rtn")
    q = json.loads((root / "q-default" / "manifest.json").read_text())["graphs"]
    assert {g["quantization"]["method"] for g in q if g["precision"] == "int4"} == {ExportOptions().int4_method}
    print(f"KL to fp32, top-1: default {new}, rtn {rtn}")
    assert new[0] < 0.5 * rtn[0], (new, rtn)  # KL to fp32 (measured: 0.0017 against 0.0071)
    assert new[1] >= rtn[1], (new, rtn)  # top-1 agreement


def test_auto_mixed_precision_keeps_the_most_sensitive_groups_at_8_bits(learned):
    """``int4_8bit="auto"``: each candidate group's task-loss increase at 4 bits is measured on
    the calibration rows; the groups kept at 8 bits are the costliest per weight that fit the
    budget, the manifest records every matrix's bits (8 exactly for those groups' matrices),
    and the graph passes the default gates."""
    import json

    from alter_edge.export.pipeline import ExportOptions, export_checkpoint
    from alter_edge.export.quant import group_of

    root, _ = learned
    man = export_checkpoint(root / "ck", root / "auto", ExportOptions(tasks=None, int4=True, progress=False, threads=1,
                                                                      int4_8bit="auto", int4_8bit_fraction=0.3))
    q = json.loads((root / "auto" / "validation.json").read_text())["quantization"]["int4"]
    sens = q["sensitivity"]
    assert sens["rows"] > 0 and set(sens["groups"]) >= {"lm_head", "o", "qkv", "up", "down", "first", "last"}
    chosen = set(q["group_bits"])
    assert chosen, sens  # something at 8 bits within 30% of the weights
    assert sum(sens["groups"][g]["weights"] for g in ("o", "qkv", "up", "down")) + sens["groups"]["lm_head"][
        "weights"] == sens["total_weights"]
    assert q["sensitivity"]["budget_mb"] * 1e6 <= 0.3 * sens["total_weights"] * 0.5 + 1e4
    bits = man["graphs"][0]["quantization"]["matrix_bits"]
    assert {k for k, b in bits.items() if b == 8} == {k for k in bits if group_of(k) in chosen
                                                      and not k.endswith("lora_A")}, (bits, chosen)
    assert set(bits.values()) == {4, 8}


def test_a_corrupted_zero_point_fails_the_int4_gate(learned, monkeypatch):
    """Every zero point of one 4-bit matrix (the first block's packed gate/up with its LoRA B
    factors) moved to the end of the code range fails the int4 multi-task graph, with a message
    naming the graph and a task."""
    from dataclasses import replace

    from alter_edge.export.validate import ExportValidationError

    root, _ = learned

    def shifted(q: QuantizedMatrix) -> QuantizedMatrix:
        if q.bits != 4:
            return q
        assert q.zero_points is not None  # the default int4 quantizer stores zero points
        return replace(q, zero_points=np.where(q.zero_points < 8, 15, 0).astype(np.uint8))

    _corrupting(monkeypatch, "layers.0.mlp.gu.wb", shifted)
    with pytest.raises(ExportValidationError) as err:
        _export(root, "zero-points")
    msg = str(err.value)
    assert msg.startswith("quantized_vs_fp32 failed for model.int4.onnx"), msg
    assert any(f"task {t} " in msg for t in ("colour", "echo", "sky")), msg


def _corrupting(monkeypatch, target: str, corrupt) -> None:
    """Every graph quantizes the weight stored under ``target`` with ``corrupt`` applied."""
    real = GraphBuilder.quantized

    def quantized(self, w, bits, key=None):
        q = real(self, w, bits, key)
        return corrupt(q) if key == target else q

    monkeypatch.setattr(GraphBuilder, "quantized", quantized)


def _nibbles_swapped(q: QuantizedMatrix) -> QuantizedMatrix:
    return QuantizedMatrix((q.data >> 4) | (q.data << 4), q.scales, q.bits, q.block_size, q.K, q.zero_points)


def test_swapped_nibbles_in_one_weight_fail_the_int4_gate(learned, monkeypatch):
    """A 4-bit layout mismatch in one matrix (the first block's packed q/k/v, stored with its
    LoRA B factors beside it) fails the int4 multi-task graph, the first int4 graph checked; the
    int8 graphs read other bytes and pass."""
    from alter_edge.export.validate import ExportValidationError

    root, _ = learned
    _corrupting(monkeypatch, "layers.0.qkv.wb", lambda q: _nibbles_swapped(q) if q.bits == 4 else q)
    with pytest.raises(ExportValidationError) as err:
        _export(root, "nibbles")
    msg = str(err.value)
    assert msg.startswith("quantized_vs_fp32 failed for model.int4.onnx"), msg
    assert "task " in msg and any(f"task {t} " in msg for t in ("colour", "echo", "sky")), msg
    assert not (root / "nibbles").exists()  # a failed export leaves no bundle


def test_one_scaled_block_fails_the_int8_gate(learned, monkeypatch):
    """One block's scale x50 (32 weights) in the first block's int8 down projection (stored with
    the LoRA B factors beside it) fails the int8 multi-task graph, the first graph checked."""
    from alter_edge.export.validate import ExportValidationError

    root, _ = learned

    def scaled(q: QuantizedMatrix) -> QuantizedMatrix:
        if q.bits != 8:
            return q
        s = q.scales.copy()
        s[0, 0] *= 50.0
        return QuantizedMatrix(q.data, s, q.bits, q.block_size, q.K, q.zero_points)

    _corrupting(monkeypatch, "layers.0.mlp.dn.wb", scaled)
    with pytest.raises(ExportValidationError) as err:
        _export(root, "scaled")
    msg = str(err.value)
    assert msg.startswith("quantized_vs_fp32 failed for model.int8.onnx"), msg
    assert any(f"task {t} " in msg for t in ("colour", "echo", "sky")), msg


@pytest.mark.parametrize("adapter_bits", [None, 8])
@pytest.mark.parametrize("kind", ["lora+attn", "bottleneck"])
def test_int4_graphs_quantize_the_adapter_factors_at_the_asked_bits(kind, adapter_bits, tmp_path, tiny_llama_dir):
    """int4 graphs: the base matmuls 4-bit; the low-rank adapter factors at the graph's own 4 bits
    (lora B then inside the base's ``[W | B]`` matmul), or at 8 with ``adapter_bits=8`` (B apart)."""
    import onnx

    from alter_edge.export.builder import BuildSpec, DecoderBuilder
    from alter_edge.export.graph import WeightFile
    from alter_edge.testing import make_tiny_checkpoint
    from alter_edge.training.checkpoint import load_checkpoint

    ck = load_checkpoint(make_tiny_checkpoint(tmp_path / "ck", tiny_llama_dir, kind))
    wf = WeightFile(tmp_path / "weights.int4.bin")
    DecoderBuilder(ck.model).build(tmp_path / "model.int4.onnx", BuildSpec("multitask"), "int4", wf,
                                   adapter_bits=adapter_bits)
    wf.close()
    bits = {n.input[1]: next(a.i for a in n.attribute if a.name == "bits")
            for n in onnx.load(tmp_path / "model.int4.onnx", load_external_data=False).graph.node
            if n.op_type == "MatMulNBits"}
    adapter = {k for k in bits if "lora_" in k or k.rsplit("_", 2)[-2] in ("down", "up") and "_mlp_" not in k}
    joined = {k for k in bits if "_wb_" in k}  # [W | B]: a base weight with the B factors beside it
    assert adapter and {bits[k] for k in adapter} == {adapter_bits or 4}, bits
    assert {bits[k] for k in bits.keys() - adapter} == {4}, bits
    assert bool(joined) == (kind == "lora+attn" and adapter_bits is None), bits


def test_learned_model_passes_the_default_gates_as_web_target(learned):
    """`--target web` (int8 matmuls as DynamicQuantizeLinear + MatMulInteger, per output
    channel) passes the same default int8 gates on the learned model, every graph."""
    import json

    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    root, _ = learned
    defaults = ExportOptions()
    export_checkpoint(root / "ck", root / "web", ExportOptions(tasks="all", int8=True, target="web", progress=False,
                                                               threads=1))
    report = json.loads((root / "web" / "validation.json").read_text())
    quantized = [c for c in report["checks"] if c["check"] == "quantized_vs_fp32"]
    assert len(quantized) == 4 and report["passed"] and report["options"]["target"] == "web"
    for c in quantized:
        assert c["min_top1"] == defaults.min_top1_int8 and c["budget_points"] == defaults.int8_budget
        assert all(m["int8"] >= 0.9 for m in c["metric"].values()), c["metric"]
