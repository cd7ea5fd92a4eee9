"""Validation that fails: every check is recorded, and a failed one raises.

Every built graph runs through the runtime's own session factory and decode loop
(``alter_edge.runtime.session.GraphRunner``, ``alter_edge.runtime.generate.decode``), so the
checks test the code that ships. Checks (docs/export.md lists the tolerances):

1. ``fp32_vs_torch``: each fp32 graph (the multi-task graph on every task and on one
   mixed-task, differently padded batch; each per-task graph on its task) against the PyTorch
   MTA model: identical greedy tokens for ``steps`` steps with the KV cache, and max |logits
   diff| <= ``atol`` at every one of those steps (the last prompt position, then each token).
2. ``quantized_vs_fp32``: a quantized graph against its fp32 twin: top-1 agreement with the
   fp32 graph's greedy tokens, step by step on its path, >= ``min_top1`` over all cases (each
   case's own figure is recorded, and a failure names the cases below it) and, per task, the task
   metric on the held-out (dev) rows,
   paired row by row: a task fails when its mean drop is over ``budget`` points and its paired
   95% interval excludes zero (the drop is real, not one or two changed answers); both are
   reported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alter_edge.metrics import row_metric
from alter_edge.padding import pad_rows
from alter_edge.prompts import encode_example
from alter_edge.runtime.generate import SamplingParams, decode
from alter_edge.runtime.session import GraphRunner
from alter_edge.tasks import TaskRegistry

from .report import ExportValidationError, ValidationReport, describe_failure

log = logging.getLogger(__name__)

__all__ = ["Case", "ExportValidationError", "HeldOut", "ValidationReport", "build_cases", "build_heldout",
           "check_against", "check_quantized", "describe_failure", "load_heldout_rows", "reference_outputs",
           "torch_reference"]

# Inputs used when no held-out data is given: different lengths, so left padding is exercised.
SYNTHETIC_INPUTS = ("hello", "what is the answer ?", "hello world . what is the answer , hello world ?")


@dataclass(frozen=True)
class Case:
    name: str  # a task name, or "mixed"
    prompts: list[list[int]]
    task_ids: list[int]


@dataclass(frozen=True)
class HeldOut:
    task: str
    task_id: int
    kind: str
    prompts: list[list[int]]
    golds: list[str] | None  # None: no `data`, the fp32 graph's predictions are the reference


# -- inputs ------------------------------------------------------------------------------

def build_cases(tokenizer, tasks: TaskRegistry, eos_id: int, max_prompt_tokens: int,
                inputs: dict[str, list[str]] | None = None, per_task: int = 3) -> list[Case]:
    """One case per task (its own prompts) plus a mixed batch with every task in it."""
    cases, mixed_p, mixed_t = [], [], []
    for spec in tasks:
        texts = list((inputs or {}).get(spec.name) or SYNTHETIC_INPUTS)[:per_task]
        prompts = [encode_example(tokenizer, spec, t, "x", eos_id, max_prompt_tokens)[0] for t in texts]
        cases.append(Case(spec.name, prompts, [spec.id] * len(prompts)))
        mixed_p += prompts[:2]
        mixed_t += [spec.id] * len(prompts[:2])
    cases.append(Case("mixed", mixed_p, mixed_t))
    return cases


def build_heldout(tokenizer, tasks: TaskRegistry, eos_id: int, max_prompt_tokens: int,
                  rows: Sequence | None, cases: list[Case], max_per_task: int | None = None) -> list[HeldOut]:
    """Per task: its held-out rows (all of them, or the first ``max_per_task``)."""
    out = []
    for spec in tasks:
        mine = [r for r in (rows or []) if r.task == spec.name][:max_per_task]
        if mine:
            prompts = [encode_example(tokenizer, spec, r.input, r.target, eos_id, max_prompt_tokens)[0]
                       for r in mine]
            out.append(HeldOut(spec.name, spec.id, spec.kind, prompts, [r.target for r in mine]))
        else:
            case = next(c for c in cases if c.name == spec.name)
            out.append(HeldOut(spec.name, spec.id, spec.kind, case.prompts, None))
    return out


def _first_mismatch(a: list[list[int]], b: list[list[int]]) -> int | None:
    first = None
    for x, y in zip(a, b, strict=True):
        for j in range(max(len(x), len(y))):
            if j >= len(x) or j >= len(y) or x[j] != y[j]:
                first = j if first is None else min(first, j)
                break
    return first


def forced_logits(runner: GraphRunner, prompts: list[list[int]], task_ids: list[int], pad_id: int,
                  tokens: list[list[int]]) -> list[np.ndarray]:
    """Each row's logits ``(steps, V)`` at its last prompt position and after each of ``tokens``
    (teacher-forced, all rows the same number of steps): the graph's prompt step, then one-token
    steps on the in-place cache, as the runtime's decode loop runs them."""
    ids, lengths = pad_rows(prompts, pad_id)
    tids = np.asarray(task_ids, np.int64)
    steps = len(tokens[0])
    cache = runner.new_cache(len(prompts), ids.shape[1] + steps)
    out = [runner.step(ids, lengths, tids, cache)[:, 0]]
    forced = np.asarray(tokens, np.int64)
    for k in range(steps - 1):
        lengths = lengths + 1
        out.append(runner.step(forced[:, k:k + 1], lengths, tids, cache)[:, 0])
    return list(np.stack(out, axis=1))


def greedy(runner: GraphRunner, prompts: list[list[int]], task_ids: list[int], pad_id: int, steps: int,
           eos_id: int = -1) -> list[list[int]]:
    """Greedy tokens from the runtime's decode loop (``eos_id=-1``: exactly ``steps`` tokens)."""
    out: list[list[int]] = [[] for _ in prompts]
    params = SamplingParams(max_new_tokens=steps)
    for i, tok in decode(runner, prompts, task_ids, eos_id, pad_id, params):
        out[i].append(tok)
    return out


def torch_reference(model, case: Case, pad_id: int, steps: int) -> tuple[list[np.ndarray], list[list[int]]]:
    """The PyTorch MTA model's greedy tokens (``steps``, its own KV-cache loop) and, per row, its
    logits ``(steps, V)`` at the last prompt position and after each of those tokens."""
    import torch

    from alter_edge.training.evaluate import greedy_generate

    tokens = greedy_generate(model, case.prompts, case.task_ids, eos_id=-1, pad_id=pad_id, max_new_tokens=steps)
    logits = []
    with torch.no_grad():
        for p, t, toks in zip(case.prompts, case.task_ids, tokens, strict=True):
            ids = torch.tensor([list(p) + toks[:-1]])
            full = model(ids, torch.ones_like(ids), torch.tensor([t])).logits[0]
            logits.append(full[len(p) - 1:].numpy())
    return logits, tokens


def reference_outputs(runner: GraphRunner, case: Case, pad_id: int, steps: int) -> tuple[list[np.ndarray], list[list[int]]]:
    """A graph's own greedy tokens and step logits on a case (the reference for another graph)."""
    tokens = greedy(runner, case.prompts, case.task_ids, pad_id, steps)
    return forced_logits(runner, case.prompts, case.task_ids, pad_id, tokens), tokens


def check_against(check: str, ref: dict, runner: GraphRunner, name: str, cases: list[Case], pad_id: int,
                  report: ValidationReport) -> None:
    """``runner``'s graph against the PyTorch reference (``ref[case.name]``) for each case: its
    greedy tokens from the runtime's decode loop, its logits at every step (teacher-forced on the
    reference tokens)."""
    for case in cases:
        ref_logits, ref_tokens = ref[case.name]
        got = forced_logits(runner, case.prompts, case.task_ids, pad_id, ref_tokens)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ref_logits, got, strict=True))
        tokens = greedy(runner, case.prompts, case.task_ids, pad_id, report.steps)
        mismatch = _first_mismatch(ref_tokens, tokens)
        report.record({"check": check, "graph": name, "case": case.name, "rows": len(case.prompts),
                       "max_abs_diff": diff, "atol": report.atol, "greedy_steps": report.steps,
                       "tokens_equal": mismatch is None, "first_token_mismatch": mismatch,
                       "passed": diff <= report.atol and mismatch is None})


def _score(kind: str, preds: list[str], golds: list[str]) -> np.ndarray:
    fn = row_metric(kind)
    return np.asarray([fn(p, g) for p, g in zip(preds, golds, strict=True)], dtype=np.float64)


def heldout_predictions(runner: GraphRunner, h: HeldOut, tokenizer, pad_id: int, eos_id: int,
                        new_tokens: int, batch: int = 16) -> list[str]:
    """Greedy answers for a held-out slice, in batches of similar length."""
    order = sorted(range(len(h.prompts)), key=lambda i: len(h.prompts[i]))
    preds: list[str] = [""] * len(order)
    for s in range(0, len(order), batch):
        rows = order[s:s + batch]
        toks = greedy(runner, [h.prompts[i] for i in rows], [h.task_id] * len(rows), pad_id, new_tokens, eos_id)
        for i, t in zip(rows, toks, strict=True):
            preds[i] = tokenizer.decode(t, skip_special_tokens=True).strip()
    return preds


def paired_interval(diff: np.ndarray) -> tuple[float, float]:
    """95% normal interval of the mean of paired differences."""
    if len(diff) < 2:
        return float(diff.mean()), float(diff.mean())
    half = 1.96 * float(diff.std(ddof=1)) / np.sqrt(len(diff))
    return float(diff.mean()) - half, float(diff.mean()) + half


def over_budget(drops: dict[str, float], intervals: dict[str, list[float]], budget: float) -> set[str]:
    """Tasks whose metric drop is over the budget and real: the paired 95% interval excludes
    zero (on ~100 dev rows one changed answer is a point, so the mean alone fails on noise)."""
    return {t for t, d in drops.items() if d > budget and intervals[t][0] > 0}


def check_quantized(src: GraphRunner, q: GraphRunner, name: str, precision: str, cases: list[Case],
                    heldout: list[HeldOut], tokenizer, pad_id: int, eos_id: int, budget: float,
                    min_top1: float, new_tokens: dict[str, int], src_preds: dict[str, list[str]],
                    steps: int = 16) -> dict:
    """Quantized graph vs its fp32 twin. ``src_preds``: the fp32 graph's held-out answers per
    task (filled here when missing, so several quantized graphs share them). Returns the record
    (the caller decides if it is fatal)."""
    agree = total = 0
    by_case = {}
    for case in cases:  # top-1 of the quantized graph on the fp32 graph's greedy path
        ref = greedy(src, case.prompts, case.task_ids, pad_id, steps)
        a = n = 0
        for toks, lg in zip(ref, forced_logits(q, case.prompts, case.task_ids, pad_id, ref), strict=True):
            a += int((lg.argmax(-1) == np.asarray(toks)).sum())
            n += len(toks)
        by_case[case.name] = round(a / max(n, 1), 4)
        agree, total = agree + a, total + n
    return quantized_record(name, precision, agree / max(total, 1), total, by_case, heldout, src_preds,
                            lambda h: heldout_predictions(src, h, tokenizer, pad_id, eos_id, new_tokens[h.task]),
                            lambda h: heldout_predictions(q, h, tokenizer, pad_id, eos_id, new_tokens[h.task]),
                            budget, min_top1)


def quantized_record(name: str, precision: str, top1: float, total: int, by_case: dict, heldout: list[HeldOut],
                     src_preds: dict[str, list[str]], src_predict, q_predict, budget: float, min_top1: float) -> dict:
    """The ``quantized_vs_fp32`` record: the top-1 agreement measured by the caller, and each
    held-out task's metric under the fp32 (``src_predict``, kept in ``src_preds``) and the
    quantized answers (``q_predict``), with the paired drop and its interval against ``budget``."""
    scores, drops, intervals, reference = {}, {}, {}, {}
    for h in heldout:
        if h.task not in src_preds:
            src_preds[h.task] = src_predict(h)
        q_preds = q_predict(h)
        golds = h.golds if h.golds is not None else src_preds[h.task]
        reference[h.task] = "held-out targets" if h.golds is not None else "fp32 predictions (no held-out data)"
        s_src, s_q = _score(h.kind, src_preds[h.task], golds), _score(h.kind, q_preds, golds)
        lo, hi = paired_interval((s_src - s_q) * 100)
        scores[h.task] = {"fp32": round(float(s_src.mean()), 4), precision: round(float(s_q.mean()), 4),
                          "rows": len(h.prompts),
                          "changed_answers": int(sum(a != b for a, b in zip(src_preds[h.task], q_preds, strict=True)))}
        drops[h.task] = round(float((s_src - s_q).mean() * 100), 2)
        intervals[h.task] = [round(lo, 2), round(hi, 2)]
    passed = top1 >= min_top1 and not over_budget(drops, intervals, budget)
    return {"check": "quantized_vs_fp32", "graph": name, "precision": precision, "case": "all",
            "top1_agreement": round(top1, 4), "top1_by_case": by_case, "min_top1": min_top1, "positions": total,
            "metric": scores, "metric_reference": reference, "metric_drop_points": drops,
            "metric_drop_interval95": intervals, "budget_points": budget, "passed": passed}


def load_heldout_rows(data: Path | None, tasks: TaskRegistry, dev_fraction: float, seed: int,
                      recorded: str | None = None, recorded_sha256: str | None = None) -> list | None:
    """The held-out (dev) slice of ``data``, split exactly as training split it. Without
    ``data``, the data the checkpoint recorded (the built-in mix, or a file still on disk with
    the bytes it trained on, ``recorded_sha256``)."""
    from alter_edge.data import (
        check_recorded_data,
        load_task_rows,
        recorded_data_path,
        split_task_rows,
    )

    if data is None and recorded:
        data = recorded_data_path(recorded)  # None: the built-in mix
        if data is not None and not data.is_file():
            return None
        if data is not None:
            check_recorded_data(data, recorded_sha256)
    elif data is None:
        return None
    rows, source = load_task_rows(data)
    tasks.check_names(sorted({r.task for r in rows}))
    return split_task_rows(rows, source, dev_fraction, seed)[1]


def answer_tokens(tokenizer, spec, default: int) -> int:
    """Greedy steps for a task's held-out answers: its longest label (+ eos) for classify tasks."""
    if spec.kind == "classify" and spec.labels:
        from alter_edge.prompts import label_token_ids

        return max(len(x) for x in label_token_ids(tokenizer, spec.labels, -1)) + 1
    return default


def validation_inputs(ck, opts) -> tuple[list, list, dict[str, int]]:
    """An export's validation cases, its held-out rows and each task's greedy answer steps, from the
    checkpoint's own split (``opts.data`` or the data it recorded)."""
    tc = ck.train_config
    rows = load_heldout_rows(opts.data, ck.tasks, tc.dev_fraction, tc.split_seed, recorded=ck.state.get("data"),
                             recorded_sha256=ck.state.get("data_sha256"))
    inputs = {t: [r.input for r in rows if r.task == t] for t in ck.tasks.names} if rows else None
    cases = build_cases(ck.tokenizer, ck.tasks, ck.eos_id, tc.max_prompt_tokens, inputs)
    heldout = build_heldout(ck.tokenizer, ck.tasks, ck.eos_id, tc.max_prompt_tokens, rows, cases, opts.heldout_rows)
    return cases, heldout, {s.name: answer_tokens(ck.tokenizer, s, tc.eval_max_new_tokens) for s in ck.tasks}

