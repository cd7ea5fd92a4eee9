"""Adapter kinds (alter_edge.kinds): one module each owning its torch forward, its per-task fold
and its graph piece; the registry; no branch on a kind's name outside the kinds' modules; the
hydra kind (shared A, per-task B heads) trains, exports and matches PyTorch."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from alter_edge import kinds
from alter_edge.config import MTAConfig
from alter_edge.errors import ConfigError
from alter_edge.testing import TINY_ROWS, make_tiny_base, make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LIFTED = dict(int8_budget=100.0, int4_budget=100.0, min_top1_int8=0.0, min_top1_int4=0.0)  # random models
# kind-name branches allowed outside alter_edge/kinds/ (none: export/quant.py's calibration sites ask
# the block's inner MLP which projections it has instead of asking for the kind's name)
KNOWN: dict[str, int] = {}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_tokenizer_dir):
    d = tmp_path_factory.mktemp("kbase")
    make_tiny_base("llama", d, tiny_tokenizer_dir, num_layers=2)
    return d


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    from alter_edge.data import write_jsonl

    p = tmp_path_factory.mktemp("kdata") / "data.jsonl"
    write_jsonl(p, TINY_ROWS)
    return p


def test_every_registered_kind_loads_under_its_name():
    for name, info in kinds.REGISTRY.items():
        assert kinds.load(name).name == name and info.name == name
    with pytest.raises(ConfigError, match="not one of"):
        MTAConfig(num_tasks=2, adapter_kind="nope")
    with pytest.raises(ConfigError, match="lora_attention"):
        MTAConfig(num_tasks=2, adapter_kind="ffn", lora_attention=True)
    assert MTAConfig(num_tasks=2, adapter_kind="hydra").lora_attention
    assert not MTAConfig(num_tasks=2, adapter_kind="bottleneck").lora_attention


def _kind_branches(path: Path) -> int:
    """Comparisons of something named ``kind`` / ``adapter_kind`` with an adapter kind's name,
    and isinstance checks on a class named ``*Kind``."""
    names = set(kinds.NAMES)
    n = 0
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            consts = [p.value for p in parts if isinstance(p, ast.Constant)]
            if any(c in names for c in consts):
                n += 1
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
            if any(isinstance(a, ast.Name) and a.id.endswith("Kind") for a in ast.walk(node.args[1])):
                n += 1
    return n


def test_no_branch_on_the_adapter_kind_outside_the_kinds_modules():
    found = {}
    for top in ("alter_edge", "training", "export", "runtime"):
        for p in sorted((ROOT / top).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            if rel.startswith("alter_edge/kinds/"):
                continue
            n = _kind_branches(p)
            if n:
                found[rel] = n
    assert found == KNOWN
    assert sum(found.values()) <= 2


def test_the_lora_merge_is_written_once():
    hits = [p for top in ("alter_edge", "export", "training") for p in (ROOT / top).rglob("*.py")
            if "np.repeat(" in p.read_text() and "@ A" in p.read_text()]
    assert [p.relative_to(ROOT).as_posix() for p in hits] == ["alter_edge/kinds/lora.py"]


def test_hydra_starts_as_the_base_and_matches_one_lora_count(base_dir):
    from alter_edge.base_model import load_base_model
    from alter_edge.inject import MTAModel, count_parameters
    from alter_edge.kinds.hydra import matched_rank

    base, _, _ = load_base_model(str(base_dir))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ref = base(input_ids=ids).logits
    torch.manual_seed(0)
    shared = MTAModel(load_base_model(str(base_dir))[0], MTAConfig(num_tasks=3, num_adapters=1, lora_rank=16))
    lora_count = count_parameters(shared)["adapters"]
    shapes = [(lyr.lora_A.shape[1], lyr.lora_B.shape[0]) for b in shared.blocks.values() for lyr in b.lora_layers]
    r = matched_rank(shapes, 16, 3)
    model = MTAModel(base, MTAConfig(num_tasks=3, num_shared=0, adapter_kind="hydra", lora_rank=r))
    n = count_parameters(model)["adapters"]
    assert n <= lora_count and n > 0.8 * lora_count
    with torch.no_grad():
        out = model(ids, task_ids=torch.tensor([1])).logits
    assert torch.allclose(out, ref, atol=1e-6)


def test_hydra_heads_diverge_when_trained(base_dir):
    from alter_edge.base_model import load_base_model
    from alter_edge.inject import MTAModel

    torch.manual_seed(0)
    model = MTAModel(load_base_model(str(base_dir))[0], MTAConfig(num_tasks=2, num_shared=0, adapter_kind="hydra",
                                                                   lora_rank=2))
    params = model.set_trainable(["adapters"])
    opt = torch.optim.SGD(params, lr=0.1)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    out = model(ids, task_ids=torch.tensor([0, 1])).logits
    out.pow(2).mean().backward()
    opt.step()
    lyr = next(iter(model.blocks.values())).lora_layers[0]
    b0, b1 = lyr.lora_B[:, :2], lyr.lora_B[:, 2:]
    assert b0.abs().sum() > 0 and b1.abs().sum() > 0 and not torch.allclose(b0, b1)


def test_hydra_exports_every_graph_kind_and_matches_pytorch(base_dir, tmp_path, data_file):
    from alter_edge.export.pipeline import ExportOptions, export_checkpoint

    ck = make_tiny_checkpoint(tmp_path / "ck", base_dir, "hydra+attn", num_top_layers=2)
    manifest = export_checkpoint(ck, tmp_path / "b", ExportOptions(tasks="all", fp32=True, int8=True, data=data_file,
                                                                   progress=False, atol=1e-4, **LIFTED))
    v = json.loads((tmp_path / "b" / "validation.json").read_text())
    assert v["checks"] and all(c["passed"] for c in v["checks"])
    assert any(c["check"] == "fp32_vs_torch" for c in v["checks"])
    assert {g["mode"] for g in manifest["graphs"]} == {"multitask", "task"}
    merged = export_checkpoint(ck, tmp_path / "m", ExportOptions(tasks="echo", merged=True, progress=False,
                                                                 atol=1e-4))
    assert any(g["mode"] == "merged" for g in merged["graphs"])
    vm = json.loads((tmp_path / "m" / "validation.json").read_text())
    assert all(c["passed"] for c in vm["checks"])
