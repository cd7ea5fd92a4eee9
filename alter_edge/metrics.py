"""The reference scorer's metrics: exact-match accuracy and ROUGE-L F1 (torch-free)."""

from __future__ import annotations

import re
from collections.abc import Sequence

_TOKEN = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


def exact_match(pred: str, gold: str) -> float:
    return float(normalize(pred) == normalize(gold))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two sequences (O(len(a) * len(b)))."""
    if not a or not b:
        return 0
    if len(b) > len(a):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_f1(pred: str, gold: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (beta = 1)."""
    return lcs_f1(_TOKEN.findall(pred.lower()), _TOKEN.findall(gold.lower()))


def lcs_f1(p: Sequence[str], g: Sequence[str]) -> float:
    """F1 (beta = 1) of the longest common subsequence of two token sequences: ROUGE-L."""
    lcs = lcs_length(p, g)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(g)
    return 2 * prec * rec / (prec + rec)


def row_metric(kind: str):
    """The per-row metric of a task kind: exact match for classify, ROUGE-L F1 for generate."""
    return exact_match if kind == "classify" else rouge_l_f1


def overall_score(per_task: dict[str, float], groups: dict[str, list[str]] | None = None) -> float:
    """The paper's overall score: the mean over task *groups* (each group the mean of its
    tasks). Without groups, every task is its own group."""
    if not per_task:
        return 0.0
    if not groups:
        return sum(per_task.values()) / len(per_task)
    means = []
    for members in groups.values():
        vals = [per_task[m] for m in members if m in per_task]
        if vals:
            means.append(sum(vals) / len(vals))
    return sum(means) / len(means) if means else 0.0
