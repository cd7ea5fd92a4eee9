"""``alter-edge bench``: load time, time to first token, decode tokens/s at batch 1 and 8,
classification rows/s and peak RSS, for one bundle in this process."""

from __future__ import annotations

import statistics
import time

from .generate import SamplingParams
from .model import EdgeModel
from .timing import peak_rss_mb, per_step, timed_run  # noqa: F401  (peak_rss_mb: re-exported)

FILLER = "the quick brown fox jumps over the lazy dog while the answer waits . "


def synthetic_prompt(model: EdgeModel, n_tokens: int) -> list[int]:
    """``n_tokens`` ids from repeated filler text (the prompt template is not used)."""
    ids = model.tokenizer.encode(FILLER, add_special_tokens=False).ids or [model.bundle.pad_id]
    return (ids * (n_tokens // len(ids) + 1))[:n_tokens]


def time_generation(model: EdgeModel, task: str, batch: int, prompt_tokens: int,
                    new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s over all rows after the first step): the
    engine's decode loop on ``batch`` copies of a synthetic prompt, eos ignored, timed by
    :func:`runtime.timing.timed_run`, the loop ``benchmarks/decode_bench.py`` times."""
    spec = model.tasks.get(task)
    prompt = synthetic_prompt(model, prompt_tokens)

    def steps(batch: int, n_new: int):
        params = SamplingParams(max_new_tokens=n_new, ignore_eos=True)
        return per_step(model.decode_ids([prompt] * batch, [spec] * batch, params), batch)
    return timed_run(steps, batch, new_tokens)


def run_bench(model: EdgeModel, task: str | None = None, prompt_tokens: int = 32,
              new_tokens: int = 64, repeats: int = 3) -> dict:
    """Medians over ``repeats`` runs after one warm-up run of each measurement."""
    gen_task = task or next((t.name for t in model.tasks if t.kind == "generate"), model.tasks.names[0])
    out: dict = {"load_s": round(model.load_seconds, 3), "task": gen_task, "engine": model.engine,
                 "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
                 "graph": model.graph_for_request([gen_task]).path}
    for batch in (1, 8):
        time_generation(model, gen_task, batch, prompt_tokens, min(new_tokens, 4))  # warm-up
        runs = [time_generation(model, gen_task, batch, prompt_tokens, new_tokens) for _ in range(repeats)]
        if batch == 1:
            out["ttft_ms"] = round(1000 * statistics.median(r[0] for r in runs), 2)
        out[f"decode_tok_s_b{batch}"] = round(statistics.median(r[1] for r in runs), 2)
    cls = task if task and model.tasks.get(task).kind == "classify" else next(
        (t.name for t in model.tasks if t.kind == "classify"), None)
    if cls is not None:
        prompts = [synthetic_prompt(model, prompt_tokens)] * 8
        model.classify_ids(prompts, cls)  # warm-up
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.classify_ids(prompts, cls)
            rates.append(len(prompts) / (time.perf_counter() - t0))
        out["classify_task"] = cls
        out["classify_rows_s"] = round(statistics.median(rates), 2)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out
