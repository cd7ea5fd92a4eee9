"""ROUGE-L on characters, the authors' generation metric (torch-free), beside the project's
word-level ROUGE-L (``alter_edge.metrics.rouge_l_f1``).

The authors' ``script/eval.py`` (alibaba/EasyNLP ``examples/mta``) scores generation with ROUGE-L
over a text's characters (each character a token, as ROUGE is run on Chinese text: the
characters joined by spaces, so whitespace is no token). Here: F1 (beta = 1) of the longest common
subsequence of the two texts' non-space characters, lower-cased. Their overall score is the mean
of three type scores: exact match for classify and nli, this for generation
(``authors_row_metric``; ``alter_edge.metrics.overall_score`` over the task groups)."""

from __future__ import annotations

from collections.abc import Callable

from .metrics import exact_match


def lcs_length(a: str, b: str) -> int:
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


def rouge_l_chars(pred: str, gold: str) -> float:
    """ROUGE-L F1 over lower-cased non-space characters."""
    p = "".join(pred.lower().split())
    g = "".join(gold.lower().split())
    lcs = lcs_length(p, g)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(g)
    return 2 * prec * rec / (prec + rec)


def authors_row_metric(kind: str) -> Callable[[str, str], float]:
    """The authors' per-row metric of a task kind: exact match (classify), character ROUGE-L (generate)."""
    return exact_match if kind == "classify" else rouge_l_chars
