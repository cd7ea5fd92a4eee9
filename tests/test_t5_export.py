"""T5 export: the encoder and decoder graphs (``export.seq2seq``), the torch-free pair runner
(``runtime.seq2seq``), the validated encoder-decoder bundle and its manifest. Tiny random T5s
(v1.0 ReLU with a tied head, v1.1 gated-GELU untied) built in-process, random non-zero adapters
and mixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alter_edge.config import MTAConfig, TrainConfig
from alter_edge.export.builder import BuildSpec
from alter_edge.export.graph import WeightFile
from alter_edge.export.seq2seq import Seq2SeqBuilder
from alter_edge.export.validate import Case
from alter_edge.runtime.seq2seq import Seq2SeqRunner, pad_prompts
from alter_edge.testing import make_tiny_t5
from alter_edge.training.evaluate import greedy_generate_seq2seq

ATOL = 3e-4
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [7, 7, 7, 4]]
TASKS = [0, 1, 2]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTER_EDGE_CACHE", str(tmp_path / "cache"))


def _model(path, kind="lora", seed=0, init_std=0.3):
    from alter_edge.base_model import load_base_model
    from alter_edge.inject import MTAModel

    base, _tok, _info = load_base_model(str(path))
    torch.manual_seed(seed)
    m = MTAModel(base, MTAConfig(num_tasks=3, num_top_layers=2, init_std=init_std, adapter_kind=kind,
                                 lora_attention=kind in ("lora", "hydra")))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in m.blocks.values():
            b.mixture.logits.copy_(torch.randn(b.mixture.logits.shape, generator=g))
    return m


def _pair(model, where, precision="fp32", spec=None):
    """Build one pair (its own weight file) and open it."""
    b = Seq2SeqBuilder(model)
    spec = spec or BuildSpec("multitask")
    wf = WeightFile(where / f"weights.{precision}.bin")
    paths = [where / f"{role}.{spec.mode}{spec.task_id}.{precision}.onnx" for role in ("encoder", "decoder")]
    for role, p in zip(("encoder", "decoder"), paths, strict=True):
        b.build(p, role, spec, precision, wf)
    wf.close()
    return Seq2SeqRunner(*paths, b.layout, b.decoder_start_token_id, model.base.config.eos_token_id, 0)


def _torch_logits(model, prompts, tids, dec):
    ids, mask = (torch.from_numpy(a) for a in pad_prompts(prompts, 0))
    with torch.no_grad(), model.tasks(torch.tensor(tids)):
        return model.base(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.tensor(dec)).logits.numpy()


@pytest.mark.parametrize("kind", ["lora", "ffn", "bottleneck", "hydra"])
def test_fp32_pair_equals_torch(t5_dir, tmp_path, kind):
    """Cross cache, one-token steps on the self cache, a whole decoder path in one call and greedy
    tokens, on a mixed-task, differently padded batch."""
    from alter_edge.export.seq2seq_check import pair_outputs, torch_pair_reference

    m = _model(t5_dir, kind)
    r = _pair(m, tmp_path)
    case = Case("mixed", PROMPTS, TASKS)
    ref = torch_pair_reference(m, case, 0, 8)
    got = pair_outputs(r, case, 0, ref["tokens"])
    valid = got["mask"].astype(bool)
    for a, b in zip(ref["cross"], got["cross"], strict=True):
        assert np.abs(a - b).transpose(0, 2, 1, 3)[valid].max() <= ATOL
    assert np.abs(ref["logits"] - got["logits"]).max() <= ATOL
    assert np.abs(ref["logits"] - got["logits_whole"]).max() <= ATOL
    assert got["logits_whole"].shape == ref["logits"].shape  # every position of the step
    assert r.greedy(PROMPTS, TASKS, 8, eos_id=-1) == ref["tokens"]
    assert greedy_generate_seq2seq(m, PROMPTS, TASKS, 1, 0, 8) == r.greedy(PROMPTS, TASKS, 8, eos_id=1)


def test_distances_past_max_distance_share_the_last_bucket(t5_dir, tmp_path):
    """A 45-token prompt and 40 decoder positions (the tiny T5's max_distance is 32): the graph's
    clipped distance table equals transformers' buckets."""
    from alter_edge.export.seq2seq_check import pair_outputs, torch_pair_reference

    m = _model(t5_dir, "bottleneck")
    r = _pair(m, tmp_path)
    case = Case("long", [[(5 + 7 * j) % 30 + 2 for j in range(45)], [4, 5, 6]], [0, 2])
    ref = torch_pair_reference(m, case, 0, 40)
    got = pair_outputs(r, case, 0, ref["tokens"])
    assert np.abs(ref["logits"] - got["logits"]).max() <= ATOL
    assert np.abs(ref["logits"] - got["logits_whole"]).max() <= ATOL


def test_mixed_batch_equals_rows_alone_and_holes_are_skipped(t5_dir, tmp_path):
    m = _model(t5_dir)
    r = _pair(m, tmp_path)
    batch = r.greedy(PROMPTS, TASKS, 6, eos_id=-1)
    assert batch == [r.greedy([p], [t], 6, eos_id=-1)[0] for p, t in zip(PROMPTS, TASKS, strict=True)]
    # a row whose self cache has a hole (a position masked 0) equals the row without it
    ids, mask = pad_prompts(PROMPTS[:1], 0)
    cross = r.encode(ids, mask, [1])
    toks = [r.decoder_start_token_id, 9, 14, 3]
    _, past = r.step(np.array([toks[:2]]), np.ones((1, 2), np.int64), mask, cross, r.empty_past(1), [1])
    _, holed = r.step(np.array([[toks[0], 21, toks[1]]]), np.array([[1, 0, 1]]), mask, cross, r.empty_past(1), [1])
    a, _ = r.step(np.array([toks[2:]]), np.ones((1, 4), np.int64), mask, cross, past, [1])
    b, _ = r.step(np.array([toks[2:]]), np.array([[1, 0, 1, 1, 1]]), mask, cross, holed, [1])
    assert np.abs(a - b).max() <= 1e-5
    ref = _torch_logits(m, PROMPTS[:1], [1], [toks])
    assert np.abs(ref[:, 2:] - b).max() <= ATOL
    # a cross cache widened (pad_cross) and stacked with a longer row's gives the same logits
    from alter_edge.runtime.seq2seq import pad_cross

    short, short_mask = r.encode(*pad_prompts(PROMPTS[1:2], 0), [1]), pad_prompts(PROMPTS[1:2], 0)[1]
    wide, wide_mask = pad_cross(short, short_mask, mask.shape[1])
    joined = [np.concatenate([x, y]) for x, y in zip(cross, wide, strict=True)]
    dec = np.array([toks[:2]] * 2)
    both, _ = r.step(dec, np.ones((2, 2), np.int64), np.concatenate([mask, wide_mask]), joined, r.empty_past(2), [1, 1])
    alone, _ = r.step(dec[:1], np.ones((1, 2), np.int64), short_mask, short, r.empty_past(1), [1])
    assert np.abs(both[1] - alone[0]).max() <= 1e-5


def test_right_padded_decoder_rows_score_as_alone(t5_dir, tmp_path):
    """Label scoring's layout: decoder paths of different lengths right-padded in one call (mask
    0 after each), every valid position's logits as the row's alone and as PyTorch's."""
    m = _model(t5_dir)
    r = _pair(m, tmp_path)
    prompt, tid = [PROMPTS[0]] * 2, [1, 1]
    ids, mask = pad_prompts(prompt, 0)
    cross = r.encode(ids, mask, tid)
    rows = [[0, 9, 14, 3], [0, 21]]
    dec = np.array([rows[0], rows[1] + [0, 0]])
    both, _ = r.step(dec, np.array([[1, 1, 1, 1], [1, 1, 0, 0]]), mask, cross, r.empty_past(2), tid)
    for i, row in enumerate(rows):
        alone, _ = r.step(np.array([row]), np.ones((1, len(row)), np.int64), mask[i:i + 1],
                          [c[i:i + 1] for c in cross], r.empty_past(1), tid[:1])
        assert np.abs(both[i, :len(row)] - alone[0]).max() <= 1e-5
        assert np.abs(_torch_logits(m, prompt[:1], tid[:1], [row])[0] - alone[0]).max() <= ATOL


def test_per_task_pair_equals_the_multitask_pair_with_that_task(t5_dir, tmp_path):
    m = _model(t5_dir, "ffn")
    multi = _pair(m, tmp_path)
    one = _pair(m, tmp_path, spec=BuildSpec("task", 2))
    assert multi.takes_task_ids and not one.takes_task_ids
    want = multi.greedy(PROMPTS, [2, 2, 2], 6, eos_id=-1)
    assert one.greedy(PROMPTS, None, 6, eos_id=-1) == want
    ids, mask = pad_prompts(PROMPTS, 0)
    c1, c2 = multi.encode(ids, mask, [2, 2, 2]), one.encode(ids, mask)
    dec = np.array([[0] + w[:-1] for w in want])
    a, _ = multi.step(dec, np.ones_like(dec), mask, c1, multi.empty_past(3), [2, 2, 2])
    b, _ = one.step(dec, np.ones_like(dec), mask, c2, one.empty_past(3))
    assert np.abs(a - b).max() <= ATOL


@pytest.mark.parametrize("precision,gate", [("int8", 0.85), ("int4", 0.70)])
def test_quantized_pairs_agree_with_fp32(t5_dir, tmp_path, precision, gate):
    from alter_edge.export.seq2seq_check import pair_outputs

    m = _model(t5_dir, init_std=0.05)  # adapters of a trained size (0.3 amplifies rounding in a random model)
    fp32 = _pair(m, tmp_path / "fp32")
    q = _pair(m, tmp_path / precision, precision)
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / precision / f"decoder.multitaskNone.{precision}"
                                                        ".onnx"), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops and "MultiHeadAttention" in ops
    case = Case("mixed", PROMPTS, TASKS)
    path = fp32.greedy(PROMPTS, TASKS, 8, eos_id=-1)
    top1 = (pair_outputs(q, case, 0, path)["logits"].argmax(-1) == np.asarray(path)).mean()
    assert top1 >= gate


# -- the export command on a T5 checkpoint ------------------------------------------------------

@pytest.fixture(scope="module")
def t5_checkpoint(tmp_path_factory, tiny_tokenizer_dir):
    from alter_edge.data import write_jsonl
    from alter_edge.testing import TINY_ROWS
    from alter_edge.training.trainer import run_training

    work = tmp_path_factory.mktemp("t5-ck")
    base = make_tiny_t5("1.1", work / "base", tiny_tokenizer_dir)
    data = work / "data.jsonl"
    write_jsonl(data, TINY_ROWS)
    cfg = TrainConfig(base_model=str(base), stages=1, stage1_steps=2, stage2_steps=0, batch_size=8, save_every=50,
                      eval_max_rows=2, eval_max_new_tokens=4,
                      mta={"num_top_layers": 2, "adapter_kind": "lora", "lora_attention": True, "init_std": 0.1})
    run_training(data, work / "run", cfg, progress=False)
    return work / "run"


def test_export_cli_writes_a_validated_encoder_decoder_bundle(t5_checkpoint, tmp_path):
    from click.testing import CliRunner

    from alter_edge.cli import main
    from alter_edge.runtime.bundle import load_bundle
    from alter_edge.runtime.manifest import Manifest, validate_manifest
    from alter_edge.training.checkpoint import load_checkpoint

    out = tmp_path / "bundle"
    r = CliRunner().invoke(main, ["export", str(t5_checkpoint), "--task", "all", "--fp32", "--int8", "--int4",
                                  "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["architecture"] == "encoder-decoder" and raw["graph_contract"] == "t5-mha"
    assert raw["seq2seq"]["cross"]["cross_key"] == "cross_key_values.{i}.key"
    assert not (out / "genai_config.json").exists()
    validate_manifest(raw, out)
    assert Manifest.from_json(raw).to_json() == raw
    roles = {(g["task"], g["precision"], g["role"]) for g in raw["graphs"]}
    tasks = [None, *raw["tasks"]]
    assert roles == {(t, p, role) for t in tasks for p in ("fp32", "int8", "int4") for role in ("encoder", "decoder")}
    assert sorted(p.name for p in out.glob("weights.*.bin")) == ["weights.fp32.bin", "weights.int4.bin",
                                                                 "weights.int8.bin"]
    report = json.loads((out / "validation.json").read_text())
    assert report["passed"] and {c["check"] for c in report["checks"]} == {"fp32_vs_torch", "task_vs_multitask",
                                                                            "quantized_vs_fp32"}
    assert load_bundle(out).manifest.decoder_start_token_id == raw["decoder_start_token_id"]
    ck = load_checkpoint(t5_checkpoint)
    prompts, tids = PROMPTS, TASKS[:len(raw["tasks"])] + [0] * (3 - len(raw["tasks"]))
    want = greedy_generate_seq2seq(ck.model, prompts, tids, ck.eos_id, ck.pad_id, 6)
    assert Seq2SeqRunner.from_bundle(out, precision="fp32").greedy(prompts, tids, 6) == want
    task = raw["tasks"][1]
    one = Seq2SeqRunner.from_bundle(out, task=task, precision="fp32")
    assert not one.takes_task_ids and one.greedy(prompts, None, 6) == greedy_generate_seq2seq(
        ck.model, prompts, [1] * 3, ck.eos_id, ck.pad_id, 6)
    assert Seq2SeqRunner.from_bundle(out).graphs["decoder"]["precision"] == "int8"


def test_merged_pairs_hold_their_own_weights_and_equal_the_task(t5_checkpoint, tmp_path):
    """`--merged` on a T5: each task's encoder and decoder with the LoRA deltas folded into the
    base weights (no adapter op, no shared weight file); greedy tokens equal PyTorch's for that
    task, and EdgeModel serves a task from its merged pair."""
    from alter_edge.export.options import ExportOptions
    from alter_edge.export.pipeline import export_checkpoint
    from alter_edge.runtime import EdgeModel
    from alter_edge.training.checkpoint import load_checkpoint

    out = tmp_path / "b"
    manifest = export_checkpoint(t5_checkpoint, out, ExportOptions(merged=True, tasks="all", fp32=True, int8=True,
                                                                    progress=False))
    assert {(g["precision"], g["mode"]) for g in manifest["graphs"]} == {
        (p, m) for p in ("fp32", "int8") for m in ("multitask", "merged")}
    merged = [g for g in manifest["graphs"] if g["task"] is not None and g["precision"] == "fp32"]
    assert merged and {g["mode"] for g in merged} == {"merged"} and all(g["external_data"] == [] for g in merged)
    assert {g["role"] for g in merged} == {"encoder", "decoder"}
    assert all(".merged." in g["path"] for g in merged)
    report = json.loads((out / "validation.json").read_text())
    assert report["passed"]
    checked = {c["graph"] for c in report["checks"] if c["check"] == "fp32_vs_torch" and c["passed"]}
    assert {g["path"] for g in merged if g["role"] == "decoder"} <= checked
    q = {c["graph"] for c in report["checks"] if c["check"] == "quantized_vs_fp32" and c["passed"]}
    assert {g["path"].replace(".fp32.", ".int8.") for g in merged if g["role"] == "decoder"} <= q
    for g in merged:  # the LoRA pieces are gone: fewer MatMuls than the multi-task graph of the role
        ops = report["build"][g["path"]]["operators"]
        multi = report["build"][f"model.{g['role']}.fp32.onnx"]["operators"]
        assert ops["MatMul"] < multi["MatMul"], (ops, multi)
    ck = load_checkpoint(t5_checkpoint)
    task = manifest["tasks"][1]
    one = Seq2SeqRunner.from_bundle(out, task=task, precision="fp32")
    assert one.graphs["decoder"]["mode"] == "merged" and not one.takes_task_ids
    assert one.greedy(PROMPTS, None, 6) == greedy_generate_seq2seq(ck.model, PROMPTS, [1] * 3, ck.eos_id, ck.pad_id, 6)
    m = EdgeModel.load(out, tasks=[task], threads=1)
    assert not m.engine_for([task]).runner.takes_task_ids  # the task's own (merged) pair, not the multi-task one
    want = m.tokenizer.decode(one.greedy([m.encode("a b c", task)[0]], None, 5)[0], skip_special_tokens=True).strip()
    assert m.generate("a b c", task=task, max_new_tokens=5).text == want


def test_manifest_schema_of_an_encoder_decoder_bundle(t5_checkpoint, tmp_path):
    """The export's manifest passes; a graph without its role, a decoder contract on an
    encoder-decoder, a missing layout, a decoder entry lacking a cross input are refused."""
    import copy

    from alter_edge.errors import BundleError
    from alter_edge.export.options import ExportOptions
    from alter_edge.export.pipeline import export_checkpoint
    from alter_edge.runtime.manifest import validate_manifest

    out = tmp_path / "b"
    raw = export_checkpoint(t5_checkpoint, out, ExportOptions(tasks=None, progress=False))
    assert [g["path"] for g in raw["graphs"]] == ["model.encoder.fp32.onnx", "model.decoder.fp32.onnx"]
    validate_manifest(raw, out)
    bad = copy.deepcopy(raw)
    del bad["graphs"][0]["role"]
    with pytest.raises(BundleError, match="lacks its role"):
        validate_manifest(bad, out)
    bad = {**copy.deepcopy(raw), "graph_contract": "gqa-right-pad"}
    with pytest.raises(BundleError, match="is not 't5-mha'"):
        validate_manifest(bad, out)
    bad = {k: v for k, v in copy.deepcopy(raw).items() if k != "seq2seq"}
    with pytest.raises(BundleError, match="lacks 'seq2seq'"):
        validate_manifest(bad, out)
    bad = copy.deepcopy(raw)
    bad["graphs"][1]["inputs"] = ["input_ids", "past_key_values.0.key", "past_key_values.0.value"]
    with pytest.raises(BundleError, match="lacks past_key_values.1.key"):
        validate_manifest(bad, out)
    bad["graphs"][1]["inputs"] = [f"past_key_values.{i}.{p}" for i in range(3) for p in ("key", "value")]
    with pytest.raises(BundleError, match="lacks cross_key_values.0.key"):
        validate_manifest(bad, out)
