"""The graph contract executed: a built graph's inputs and outputs are runtime.contract.KVLayout's
lists, in order; the family table is one (the injection's derived from it); the modules of the
base package this change owns import nothing from training, export or runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import onnx
import pytest

from alter_edge.families import FAMILIES
from alter_edge.inject import ARCH_TABLE, ArchSpec
from alter_edge.testing import make_tiny_base, make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_built_graph_names_are_the_kv_layouts(arch, tiny_tokenizer_dir, tmp_path):
    from alter_edge.export.builder import BuildSpec, DecoderBuilder
    from alter_edge.export.graph import WeightFile
    from alter_edge.training.checkpoint import load_checkpoint

    base = make_tiny_base(arch, tmp_path / "base", tiny_tokenizer_dir, num_layers=2)
    ck = load_checkpoint(make_tiny_checkpoint(tmp_path / "ck", base, "lora+attn", num_top_layers=1))
    b = DecoderBuilder(ck.model)
    wf = WeightFile(tmp_path / "w.bin")
    for spec, multitask in ((BuildSpec("multitask"), True), (BuildSpec("task", 0), False)):
        path = tmp_path / f"{spec.mode}.onnx"
        b.build(path, spec, "fp32", wf)
        m = onnx.load(str(path), load_external_data=False)
        assert [i.name for i in m.graph.input] == b.kv.input_names(multitask)
        assert [o.name for o in m.graph.output] == b.kv.output_names()
    wf.close()


def test_one_family_table():
    assert set(ARCH_TABLE) == set(FAMILIES)
    assert all(ARCH_TABLE[k] == ArchSpec.of(f) for k, f in FAMILIES.items())


OWNED_BASE = ["alter_edge/mta.py", "alter_edge/inject.py", "alter_edge/config.py", "alter_edge/families.py",
              *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "alter_edge" / "kinds").glob("*.py"))]


@pytest.mark.parametrize("rel", OWNED_BASE)
def test_base_modules_import_no_later_stage_and_no_private_name(rel):
    for node in ast.walk(ast.parse((ROOT / rel).read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = ("." * node.level) + (node.module or "")
            assert not any(part in mod.split(".") for part in ("training", "export", "runtime")), (rel, mod)
            assert not any(a.name.startswith("_") for a in node.names if a.name != "__future__"), (rel, mod)
        elif isinstance(node, ast.Import):
            assert not any(a.name.split(".")[1:2] in (["training"], ["export"], ["runtime"]) for a in node.names)


@pytest.mark.parametrize("rel", ["export/builder.py", "export/adapters.py", "export/ends.py", "export/families.py"])
def test_export_modules_import_no_private_name(rel):
    for node in ast.walk(ast.parse((ROOT / rel).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            assert not any(a.name.startswith("_") for a in node.names), (rel, node.module)
