"""The benchmarks' PyTorch rows run training's own greedy loop (alter_edge.testing.time_torch_greedy,
which wraps training.evaluate.greedy_generate); decode_bench's torch worker goes through it.
export_bench's per-family build worker and graph_identity's fingerprints, on tiny models."""

from __future__ import annotations

from pathlib import Path

from alter_edge.testing import load_script, time_torch_greedy

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_time_torch_greedy_runs_the_whole_budget(runtime_ckpt, monkeypatch):
    import alter_edge.training.evaluate as ev

    calls = []
    real = ev.greedy_generate

    def spy(model, prompts, task_ids, eos_id, pad_id, max_new_tokens):
        out = real(model, prompts, task_ids, eos_id, pad_id, max_new_tokens=max_new_tokens)
        calls.append((len(prompts), eos_id, max_new_tokens, [len(x) for x in out]))
        return out

    monkeypatch.setattr(ev, "greedy_generate", spy)
    first, tps = time_torch_greedy(runtime_ckpt.model, [5, 6, 7], 0, 2, 5, runtime_ckpt.pad_id)
    assert first > 0 and tps > 0
    # eos ignored: every row gets the whole budget, the first token timed by a 1-token run
    assert calls == [(2, -1, 1, [1, 1]), (2, -1, 5, [5, 5])]


def test_decode_bench_torch_worker(runtime_ckpt_dir, runtime_ckpt):
    bench = load_script(BENCH / "decode_bench.py", "bench_decode")
    job = {"engine": "torch", "checkpoint": str(runtime_ckpt_dir), "prompt": [5, 6, 7], "task_id": 1,
           "threads": 1, "batches": [1, 2], "new_tokens": 4, "pad": runtime_ckpt.pad_id}
    out = bench.run_worker(job)
    assert out["b1_tok_s"] > 0 and out["b2_tok_s"] > 0 and out["b1_ttft_ms"] > 0 and out["peak_rss_mb"] > 0


def test_export_bench_build_worker_writes_every_graph_of_a_family(tiny_tokenizer_dir, tmp_path):
    """--families times this step (in its own process): the multi-task graph and one per task."""
    from alter_edge.testing import make_tiny_checkpoint, make_tiny_family

    bench = load_script(BENCH / "export_bench.py", "bench_export")
    base = make_tiny_family("phi3", tmp_path / "base", tiny_tokenizer_dir)
    ck = make_tiny_checkpoint(tmp_path / "ck", base, kind="lora+attn", num_top_layers=1)
    bench.build_worker(ck, tmp_path / "out", "int4")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["model.int4.onnx", "task-colour.int4.onnx", "task-echo.int4.onnx", "task-parity.int4.onnx",
                     "weights.int4.bin"]


def test_graph_identity_fingerprints_every_graph(tiny_llama_dir, tmp_path):
    bench = load_script(BENCH / "graph_identity.py", "bench_graph_identity")
    res = bench.fingerprint(str(tiny_llama_dir), tmp_path, new_tokens=3)
    graphs = res["graphs"]
    assert sorted(graphs) == sorted(f"{g}.{p}" for g in ("multitask", "task-echo", "merged-echo", "plain")
                                    for p in ("fp32", "int8", "int4"))
    assert all(len(t) == 3 for g in graphs.values() for t in g["tokens"])
    assert len(graphs["multitask.fp32"]["tokens"]) == len(bench.PROMPTS)
    assert len(res["weights"]) == 9 and len({g["sha256"] for g in graphs.values()}) == 12


def test_graph_ab_times_every_graph_against_the_first(runtime_bundle, tmp_path, monkeypatch):
    import json
    import sys

    bench = load_script(BENCH / "graph_ab.py", "bench_graph_ab")
    graphs = sorted(str(p) for p in runtime_bundle.glob("*.onnx"))[:2]
    out = tmp_path / "ab.json"
    monkeypatch.setattr(sys, "argv", ["graph_ab.py", *graphs, "--rounds", "2", "--threads", "1", "--new-tokens", "3",
                                      "--batches", "1", "2", "--json", str(out)])
    bench.main()
    res = json.loads(out.read_text())["results"]
    assert [(r["graph"], r["batch"]) for r in res] == [(g, b) for g in graphs for b in (1, 2)]
    assert all(len(r["runs"]) == 2 and r["tok_s"] > 0 for r in res)
    assert all(r["ratio_to_first"] == 1.0 for r in res if r["graph"] == graphs[0])
