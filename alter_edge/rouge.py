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

from .metrics import exact_match, lcs_f1, lcs_length

__all__ = ["authors_row_metric", "lcs_length", "rouge_l_chars"]


def rouge_l_chars(pred: str, gold: str) -> float:
    """ROUGE-L F1 over lower-cased non-space characters."""
    return lcs_f1("".join(pred.lower().split()), "".join(gold.lower().split()))


def authors_row_metric(kind: str) -> Callable[[str, str], float]:
    """The authors' per-row metric of a task kind: exact match (classify), character ROUGE-L (generate)."""
    return exact_match if kind == "classify" else rouge_l_chars
