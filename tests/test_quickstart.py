"""scripts/quickstart.sh, the main job, run as written on a tiny model at a tiny budget:
train -> eval -> export --task all --int8 -> inspect -> run (texts, then a mixed-task batch)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

from alter_edge.data import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "quickstart.sh"


def _rows_named_like_the_builtin_mix(n: int = 24) -> list[dict]:
    """The built-in mix's task names and kinds, on words the tiny tokenizer knows."""
    rng = random.Random(0)
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird"]
    rows = []
    for _ in range(n):
        w, a, b = rng.choice(words), rng.choice(words), rng.choice(words)
        k = rng.randint(1, 6)
        rows += [
            {"task": "nli", "input": f"swap {a} {b}", "target": rng.choice(["red", "blue", "green"])},
            {"task": "question_gen", "input": f"swap {a} {b}", "target": f"{b} {a}"},
            {"task": "topic", "input": f"count {' '.join(['x'] * k)} {w}", "target": "even" if k % 2 == 0 else "odd"},
            {"task": "question", "input": f"is {w} a colour",
             "target": "yes" if w in {"red", "blue", "green"} else "no"},
        ]
    seen: set = set()
    return [r for r in rows if (r["task"], r["input"]) not in seen and not seen.add((r["task"], r["input"]))]


def test_quickstart_script_exports_with_the_users_words():
    text = SCRIPT.read_text()
    assert re.search(r'export "\$CKPT" --task all --int8 --out', text)
    assert "--int8-budget" not in text and "--int8-min-top1" not in text


def test_quickstart_pipeline_on_a_tiny_model(trainable_llama_dir, tmp_path):
    data = tmp_path / "mix.jsonl"
    write_jsonl(data, _rows_named_like_the_builtin_mix())
    env = {**os.environ, "AE": f"{sys.executable} -m alter_edge.cli", "PY": sys.executable,
           "ALTER_EDGE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path),
           "QUICKSTART_TRAIN_ARGS": f"--base-model {trainable_llama_dir} --data {data} --stage1-steps 8 "
                                    "--stage2-steps 2 --batch-size 4 --top-layers 2 --eval-rows 4"}
    out = tmp_path / "qs"
    r = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    log = r.stdout
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["complete"] and len(state["history"]) == 10  # 8 + 2 steps: the test's budget won
    assert "overall (mean over task groups)" in log
    assert re.search(r"^int8 .*\d\.\d{3}$", log, flags=re.M)  # the dev table's int8 row
    # dev rows picked by a fixed seed, each with its gold answer and the bundle's prediction
    golds = re.findall(r"^\[(\w+)\] .*\n    gold: (.*)\n  [= ] pred: ", log, flags=re.M)
    from alter_edge.cli.demo import seeded_dev_rows

    picked = seeded_dev_rows(out / "checkpoint", 8, 0)  # 8, or the whole dev split when smaller
    n = len(picked)
    assert n >= 5 and len(golds) == n and re.search(rf"^\d of {n} exactly right$", log, flags=re.M), log[-2500:]
    assert [(r.task, r.target) for r in picked] == golds
    assert seeded_dev_rows(out / "checkpoint", 8, 0) == picked  # the same rows every run
    assert "hashes: ok" in log
    manifest = (out / "bundle" / "manifest.json").read_text()
    for task in ("nli", "question_gen", "topic", "question"):
        assert f"task-{task}.int8.onnx" in manifest
    assert '"int8"' in manifest
    labels = [line.split("\t")[0] for line in log.splitlines() if "\t" in line]
    assert len(labels) == 4 and set(labels[:2]) <= {"even", "odd"} and set(labels[2:]) <= {"yes", "no"}
    batch = re.findall(r"^\[(\w+)\] .*\n    -> ", log, flags=re.M)
    assert batch == ["nli", "nli", "question_gen", "topic", "question"]
    # a second run reuses the finished checkpoint
    r = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0 and "is complete, reusing it" in r.stdout
