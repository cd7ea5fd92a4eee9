"""Validation that fails: every check is recorded, and a failed one raises.

Checks, in order (docs/export.md lists the tolerances):

1. ``onnx_vs_torch``: the multi-task graph against the PyTorch MTA model, for every task id
   and one mixed-task batch: max |logits diff| at unpadded positions of the prompt step
   <= ``atol``, and identical greedy tokens for ``steps`` steps with the KV cache.
2. ``optimized_vs_source`` / ``task_vs_multitask``: an ORT graph against another ORT graph
   (the offline-optimized file against its raw export; a per-task graph against the
   multi-task graph run with that task id), same tolerance and token check.
3. ``quantized_vs_fp32``: top-1 agreement at unpadded prompt positions >= ``min_top1`` and,
   per task, the task metric on a held-out slice dropping by at most ``budget`` points.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alter_edge.errors import BundleError
from alter_edge.metrics import row_metric
from alter_edge.prompts import encode_example
from alter_edge.tasks import TaskRegistry

from .ortgraph import OrtGraph, left_pad_np

log = logging.getLogger(__name__)

# Inputs used when no held-out data is given: different lengths, so left padding is exercised.
SYNTHETIC_INPUTS = ("hello", "what is the answer ?", "hello world . what is the answer , hello world ?")


class ExportValidationError(BundleError):
    """A graph failed a parity or budget check; the message names the graph, case and figure."""


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
    golds: list[str] | None  # None: no held-out data, the fp32 graph's predictions are the reference


@dataclass
class ValidationReport:
    atol: float
    steps: int
    checks: list[dict] = field(default_factory=list)

    def record(self, check: dict, fatal: bool = True) -> dict:
        self.checks.append(check)
        status = "ok" if check["passed"] else "FAILED"
        log.info("%s %s [%s]: %s", check["check"], check["graph"], check.get("case", ""), status)
        if fatal and not check["passed"]:
            raise ExportValidationError(describe_failure(check))
        return check

    def to_dict(self) -> dict:
        return {"atol": self.atol, "greedy_steps": self.steps, "passed": all(c["passed"] for c in self.checks),
                "checks": self.checks}


def describe_failure(c: dict) -> str:
    what = [f"{c['check']} failed for {c['graph']}"]
    if c.get("case"):
        what.append(f"case {c['case']}")
    if "max_abs_diff" in c and c["max_abs_diff"] > c.get("atol", float("inf")):
        what.append(f"max |logits diff| {c['max_abs_diff']:.3g} > atol {c['atol']:g} "
                    "(a deep fp32 model can need a larger `atol`; see docs/export.md)")
    if c.get("tokens_equal") is False:
        what.append(f"greedy tokens differ from step {c.get('first_token_mismatch')}")
    if "top1_agreement" in c and c["top1_agreement"] < c["min_top1"]:
        what.append(f"top-1 agreement {c['top1_agreement']:.3f} < {c['min_top1']}")
    for t, d in (c.get("metric_drop_points") or {}).items():
        if d > c["budget_points"]:
            what.append(f"task {t} metric drops {d:.2f} points > budget {c['budget_points']}")
    return "; ".join(what)


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
                  rows: Sequence | None, cases: list[Case], max_per_task: int) -> list[HeldOut]:
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


def _unpadded_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    sel = mask.astype(bool)
    return float(np.abs(a[sel] - b[sel]).max())


def _first_mismatch(a: list[list[int]], b: list[list[int]]) -> int | None:
    first = None
    for x, y in zip(a, b, strict=True):
        for j in range(max(len(x), len(y))):
            if j >= len(x) or j >= len(y) or x[j] != y[j]:
                first = j if first is None else min(first, j)
                break
    return first


def _parity(check: str, graph: str, case: Case, ref_logits: np.ndarray, got_logits: np.ndarray,
            mask: np.ndarray, ref_tokens: list[list[int]], got_tokens: list[list[int]],
            atol: float, steps: int) -> dict:
    diff = _unpadded_diff(ref_logits, got_logits, mask)
    mismatch = _first_mismatch(ref_tokens, got_tokens)
    return {"check": check, "graph": graph, "case": case.name, "rows": len(case.prompts),
            "max_abs_diff": diff, "atol": atol, "greedy_steps": steps, "tokens_equal": mismatch is None,
            "first_token_mismatch": mismatch, "passed": diff <= atol and mismatch is None}


# -- checks ------------------------------------------------------------------------------

def check_onnx_vs_torch(model, graph: OrtGraph, name: str, cases: list[Case], pad_id: int,
                        report: ValidationReport) -> None:
    """The multi-task graph against the PyTorch MTA model (``greedy_generate`` is the reference)."""
    import torch

    from alter_edge.training.evaluate import greedy_generate

    for case in cases:
        ids, mask = left_pad_np(case.prompts, pad_id)
        tids = np.asarray(case.task_ids, np.int64)
        with torch.no_grad():
            t_mask = torch.from_numpy(mask)
            pos = (t_mask.cumsum(-1) - 1).clamp(min=0)
            ref = model(torch.from_numpy(ids), t_mask, torch.from_numpy(tids), position_ids=pos).logits.numpy()
        got = graph.prompt_logits(ids, mask, tids)
        ref_tok = greedy_generate(model, case.prompts, case.task_ids, eos_id=-1, pad_id=pad_id,
                                  max_new_tokens=report.steps)
        got_tok = graph.greedy(case.prompts, case.task_ids, pad_id, report.steps)
        report.record(_parity("onnx_vs_torch", name, case, ref, got, mask, ref_tok, got_tok,
                              report.atol, report.steps))


def check_graph_pair(check: str, ref: OrtGraph, got: OrtGraph, name: str, cases: list[Case],
                     pad_id: int, report: ValidationReport) -> None:
    """``got`` against ``ref`` (ORT vs ORT). A graph without ``task_ids`` is run on the cases of
    its task only (with the ids passed to ``ref``)."""
    for case in cases:
        ids, mask = left_pad_np(case.prompts, pad_id)
        tids = np.asarray(case.task_ids, np.int64)
        ref_l = ref.prompt_logits(ids, mask, tids if ref.multitask else None)
        got_l = got.prompt_logits(ids, mask, tids if got.multitask else None)
        ref_tok = ref.greedy(case.prompts, case.task_ids if ref.multitask else None, pad_id, report.steps)
        got_tok = got.greedy(case.prompts, case.task_ids if got.multitask else None, pad_id, report.steps)
        report.record(_parity(check, name, case, ref_l, got_l, mask, ref_tok, got_tok,
                              report.atol, report.steps))


def _score(kind: str, preds: list[str], golds: list[str]) -> float:
    fn = row_metric(kind)
    return float(np.mean([fn(p, g) for p, g in zip(preds, golds, strict=True)])) if preds else 0.0


def check_quantized(src: OrtGraph, q: OrtGraph, name: str, precision: str, cases: list[Case],
                    heldout: list[HeldOut], tokenizer, pad_id: int, eos_id: int, budget: float,
                    min_top1: float, new_tokens: int = 16) -> dict:
    """Quantized graph vs its fp32 source. Returns the record (the caller decides if fatal)."""
    agree = total = 0
    for case in cases:
        ids, mask = left_pad_np(case.prompts, pad_id)
        tids = np.asarray(case.task_ids, np.int64)
        a = src.prompt_logits(ids, mask, tids if src.multitask else None).argmax(-1)
        b = q.prompt_logits(ids, mask, tids if q.multitask else None).argmax(-1)
        sel = mask.astype(bool)
        agree += int((a[sel] == b[sel]).sum())
        total += int(sel.sum())
    top1 = agree / max(total, 1)
    scores, drops, reference = {}, {}, {}
    for h in heldout:
        tids = [h.task_id] * len(h.prompts) if src.multitask else None

        def gen(g: OrtGraph, tids=tids, h=h) -> list[str]:
            toks = g.greedy(h.prompts, tids, pad_id, new_tokens, eos_id)
            return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in toks]

        src_preds, q_preds = gen(src), gen(q)
        golds = h.golds if h.golds is not None else src_preds
        reference[h.task] = "held-out targets" if h.golds is not None else "fp32 predictions (no held-out data)"
        s_src, s_q = _score(h.kind, src_preds, golds), _score(h.kind, q_preds, golds)
        scores[h.task] = {"fp32": round(s_src, 4), precision: round(s_q, 4), "rows": len(h.prompts)}
        drops[h.task] = round((s_src - s_q) * 100, 2)
    passed = top1 >= min_top1 and all(d <= budget for d in drops.values())
    return {"check": "quantized_vs_fp32", "graph": name, "precision": precision, "case": "all",
            "top1_agreement": round(top1, 4), "min_top1": min_top1, "positions": total,
            "metric": scores, "metric_reference": reference, "metric_drop_points": drops,
            "budget_points": budget, "passed": passed}


def load_heldout_rows(data: Path | None, tasks: TaskRegistry, dev_fraction: float, seed: int,
                      recorded: str | None = None) -> list | None:
    """The held-out (dev) slice of ``data``, split exactly as training split it. Without
    ``data``, the data the checkpoint recorded (the built-in mix, or a file still on disk)."""
    from alter_edge.data import load_task_rows, recorded_data_path, split_task_rows

    if data is None and recorded:
        data = recorded_data_path(recorded)  # None: the built-in mix
        if data is not None and not data.is_file():
            return None
    elif data is None:
        return None
    rows, source = load_task_rows(data)
    tasks.check_names(sorted({r.task for r in rows}))
    return split_task_rows(rows, source, dev_fraction, seed)[1]
