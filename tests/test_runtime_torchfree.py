"""The runtime imports and runs with torch and transformers blocked (a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKER = textwrap.dedent("""
    import sys

    class Block:
        BLOCKED = ("torch", "transformers", "safetensors", "onnx", "onnxscript")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"blocked in the torch-free test: {name}")
            return None

    sys.meta_path.insert(0, Block())
""")


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(BLOCKER + textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_blocker_works(tmp_path):
    r = _run("import torch\n", tmp_path)
    assert r.returncode != 0 and "blocked in the torch-free test: torch" in r.stderr


def test_runtime_without_torch(runtime_bundle, edge_model, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": 1, "task": "echo", "input": "repeat cat dog"}) + "\n")
    code = f"""
        import json
        from alter_edge.runtime import EdgeModel
        m = EdgeModel.load({str(runtime_bundle)!r}, threads=1)
        g = m.generate(["repeat cat dog", "is red a colour"], tasks=["echo", "colour"], max_new_tokens=6)
        c = m.classify("is red a colour", "colour")
        s = "".join(ev.text for ev in m.stream("repeat cat dog", task="echo", max_new_tokens=6))
        from alter_edge.cli import main
        try:
            main(["run", {str(runtime_bundle)!r}, "--input", {str(inp)!r}, "--output", "out.jsonl", "--quiet"])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        import sys
        bad = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "transformers"))
        print(json.dumps({{"gen": [x.token_ids for x in g], "label": c.label, "stream": s, "modules": bad}}))
    """
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["modules"] == []
    want = edge_model.generate(["repeat cat dog", "is red a colour"], tasks=["echo", "colour"], max_new_tokens=6)
    assert res["gen"] == [x.token_ids for x in want]
    assert res["label"] == edge_model.classify("is red a colour", "colour").label
    assert res["stream"] == want[0].text
    assert json.loads((tmp_path / "out.jsonl").read_text())["id"] == 1


def test_ray_job_imports_without_torch(tmp_path):
    import pytest

    pytest.importorskip("ray.data", reason="the Ray job needs the [ray] extra")
    r = _run("import alter_edge.runtime.ray as r\nprint(r.RayOptions().actors)\n", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"


def test_server_runs_without_torch(runtime_bundle, tmp_path):
    import pytest

    pytest.importorskip("uvicorn", reason="the server needs the [serve] extra")
    code = f"""
        import json, sys
        from alter_edge.runtime import EdgeModel
        from alter_edge.runtime.serve.app import Server, ServeOptions
        from alter_edge.cli import main
        server = Server(EdgeModel.load({str(runtime_bundle)!r}, threads=1), ServeOptions())
        bad = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "transformers"))
        print(json.dumps({{"tasks": server.tasks, "modules": bad}}))
    """
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["modules"] == [] and "echo" in res["tasks"]
