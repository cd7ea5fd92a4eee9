"""The benchmarks' PyTorch rows run training's own greedy loop (alter_edge.testing.time_torch_greedy,
which wraps training.evaluate.greedy_generate); decode_bench's torch worker goes through it."""

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
