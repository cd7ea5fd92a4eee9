"""Every decoder family the graph builder writes, end to end on a tiny random model of it built
in-process from its transformers config (alter_edge.testing.FAMILY_CONFIGS: 2 layers, hidden
64, each family's peculiarities switched on): two-stage training with the frozen-prefix cache;
the fp32 multi-task and per-task graphs against PyTorch at the export's tolerance; int8 and int4
against fp32; merged graphs; a mixed-task batch against one row at a time; onnxruntime-genai's
greedy tokens against ours. A base model of another family is refused before training starts."""

from __future__ import annotations

import json

import pytest
import torch

from alter_edge.config import TrainConfig
from alter_edge.errors import ConfigError
from alter_edge.export.families import FAMILIES
from alter_edge.inject import ARCH_TABLE
from alter_edge.runtime import EdgeModel
from alter_edge.runtime.generate import SamplingParams, decode
from alter_edge.testing import (
    FAMILY_CONFIGS,
    TINY_ROWS,
    build_bundle,
    make_tiny_checkpoint,
    make_tiny_family,
)

try:
    import onnxruntime_genai as og
except ImportError:
    og = None

NAMES = sorted(FAMILY_CONFIGS)
ATOL = 3e-4  # the export's default fp32 tolerance
# random models: top-1 agreement with the fp32 graph at every prompt position (their task metrics mean nothing)
GATES = dict(int8_budget=100.0, int4_budget=100.0, min_top1_int8=0.9, min_top1_int4=0.5)
MIXED = [("echo", "swap cat dog"), ("parity", "count x"), ("colour", "is fish a colour"),
         ("parity", "count x x x x x x"), ("echo", "swap sun moon")]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTER_EDGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("families")
    return {f: make_tiny_family(f, root / f, tiny_tokenizer_dir) for f in NAMES}


@pytest.fixture(scope="module", params=NAMES)
def exported(request, bases, tmp_path_factory):
    """(family, checkpoint, bundle): random lora adapters on the MLP and attention of the top
    block, the multi-task and 'echo' graphs at fp32, int8 and int4, validated by the export."""
    f = request.param
    work = tmp_path_factory.mktemp(f"export-{f}")
    ck = make_tiny_checkpoint(work / "ck", bases[f], kind="lora+attn", num_top_layers=1)
    bundle = build_bundle(ck, work / "bundle", task_graphs=("echo",), fp32=True, int8=True, int4=True, **GATES)
    return f, ck, bundle


def test_the_family_tables_agree():
    """What training injects into is what the builder writes, and each has a tiny test model."""
    assert set(ARCH_TABLE) == set(FAMILIES) == set(FAMILY_CONFIGS)
    assert len(FAMILIES) >= 8
    for name, fam in FAMILIES.items():
        spec = ARCH_TABLE[name]
        assert (spec.layers, spec.mlp, spec.attn) == (fam.layers, fam.mlp, fam.attn), name
        assert spec.lora_targets == fam.mlp_names and spec.attn_targets == fam.attn_names, name


@pytest.mark.parametrize("family", NAMES)
def test_trains_two_stages_with_the_prefix_cache(family, bases, tmp_path):
    from alter_edge.data import write_jsonl
    from alter_edge.training.checkpoint import load_checkpoint
    from alter_edge.training.trainer import run_training

    data = tmp_path / "data.jsonl"
    write_jsonl(data, TINY_ROWS)
    cfg = TrainConfig(base_model=str(bases[family]), stage1_steps=3, stage2_steps=2, batch_size=8, stage1_lr=5e-3,
                      stage2_lr=5e-2, eval_max_rows=2, eval_max_new_tokens=2, cache_dtype="float32",
                      mta={"num_top_layers": 1, "adapter_kind": "lora", "lora_attention": True})
    state = run_training(data, tmp_path / "run", cfg, progress=False)
    assert state["complete"] and [h["stage"] for h in state["history"]].count("stage1") == 3
    assert list((tmp_path / "cache" / "prefix").glob("*.safetensors"))  # stage 1 ran on the cache
    model = load_checkpoint(tmp_path / "run").model
    assert any(float(b.lora_layers[0].lora_B.abs().max()) > 0 for b in model.blocks.values())  # it learned
    # the cached path (blocks below the first adapted one skipped) is the full forward
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    mask, tids = torch.ones_like(ids), torch.tensor([0, 2])
    at = (torch.tensor([0, 1]), torch.tensor([3, 2]))
    with torch.no_grad():
        full = model.logits_at(ids, mask, tids, at)
        cached = model.logits_at(ids, mask, tids, at, prefix_hidden=model.prefix_hidden(ids, mask))
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


def test_graphs_against_pytorch_and_fp32(exported):
    """fp32 graphs (multi-task and per-task) equal PyTorch at the export's tolerance, greedy tokens
    included; int8 and int4 agree with fp32 under the random-model gates; a folded per-task graph
    equals its precision's multi-task graph."""
    _, _, bundle = exported
    v = json.loads((bundle / "validation.json").read_text())
    checks = v["checks"]
    fp32 = [c for c in checks if c["check"] == "fp32_vs_torch"]
    assert {c["graph"] for c in fp32} == {"model.fp32.onnx", "task-echo.fp32.onnx"}
    assert all(c["passed"] and c["tokens_equal"] and c["max_abs_diff"] <= ATOL for c in fp32)
    quant = {c["graph"]: c for c in checks if c["check"] == "quantized_vs_fp32"}
    assert set(quant) == {f"{g}.{p}.onnx" for g in ("model", "task-echo") for p in ("int8", "int4")}
    for name, c in quant.items():
        gate = GATES["min_top1_int8"] if ".int8." in name else GATES["min_top1_int4"]
        assert c["passed"] and c["top1_agreement"] >= gate, name
    folded = [c for c in checks if c["check"] == "task_vs_multitask"]
    assert len(folded) == 2 and all(c["passed"] for c in folded)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {g["precision"] for g in manifest["graphs"]} == {"fp32", "int8", "int4"}


def test_merged_graph_against_pytorch(exported, tmp_path):
    _, ck, _ = exported
    bundle = build_bundle(ck, tmp_path / "merged", task_graphs=("echo",), merged=True, int8=True, fp32=True, **GATES)
    checks = json.loads((bundle / "validation.json").read_text())["checks"]
    merged = [c for c in checks if c["graph"] == "task-echo.merged.fp32.onnx"]
    assert merged and all(c["passed"] and c["max_abs_diff"] <= ATOL for c in merged)
    assert any(c["graph"] == "task-echo.merged.int8.onnx" and c["passed"] for c in checks)


def _greedy(model: EdgeModel, rows, n: int = 6) -> list[list[int]]:
    runner = model.runner_for(model.tasks.names)
    prompts = [model.prompt_ids(text, task)[0] for task, text in rows]
    tids = [model.tasks.id_of(task) for task, _ in rows]
    out: list[list[int]] = [[] for _ in rows]
    for row, token in decode(runner, prompts, tids, model.bundle.eos_id, model.bundle.pad_id,
                             SamplingParams(max_new_tokens=n)):
        out[row].append(token)
    return out


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_a_mixed_task_batch_equals_one_row_at_a_time(exported, precision):
    _, _, bundle = exported
    model = EdgeModel.load(bundle, threads=1, precision=precision)
    batch = _greedy(model, MIXED)
    assert batch == [_greedy(model, [row])[0] for row in MIXED]


@pytest.mark.skipif(og is None, reason="onnxruntime-genai is not installed (pip install -e '.[genai]')")
def test_genai_greedy_equals_ours(exported):
    from alter_edge.testing import genai_greedy

    _, _, bundle = exported
    graph = json.loads((bundle / "genai_config.json").read_text())["model"]["decoder"]["filename"]
    assert graph == "model.int8.onnx"  # the multi-task graph at the runtime's default precision
    edge = EdgeModel.load(bundle, threads=1, precision="int8")
    prompts = [edge.prompt_ids(text, task)[0] for task, text in MIXED]
    tids = [edge.tasks.id_of(task) for task, _ in MIXED]
    got = genai_greedy(og.Model(str(bundle)), prompts, tids, edge.bundle.pad_id, edge.bundle.eos_id, 6)
    assert got == _greedy(edge, MIXED)


def test_an_unsupported_base_model_is_refused_before_training(tmp_path, tiny_tokenizer_dir):
    from transformers import BartConfig

    from alter_edge.data import write_jsonl
    from alter_edge.training.trainer import run_training

    base = tmp_path / "bart"  # (T5 trains: tests/test_t5.py)
    BartConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
               encoder_ffn_dim=64, decoder_ffn_dim=64).save_pretrained(base)  # no weights at all
    (base / "tokenizer.json").write_text((tiny_tokenizer_dir / "tokenizer.json").read_text())
    data = tmp_path / "data.jsonl"
    write_jsonl(data, TINY_ROWS)
    with pytest.raises(ConfigError) as err:
        run_training(data, tmp_path / "run", TrainConfig(base_model=str(base), stage1_steps=1, stage2_steps=1),
                     progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "'bart'" in msg and all(f in msg for f in FAMILIES) and "t5" in msg
    assert not (tmp_path / "run" / "state.json").exists()
