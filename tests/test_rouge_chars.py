"""Character-level ROUGE-L (alter_edge/rouge.py), the authors' generation metric."""

from __future__ import annotations

import pytest

from alter_edge.metrics import exact_match, rouge_l_f1
from alter_edge.rouge import authors_row_metric, lcs_length, rouge_l_chars


def test_char_rouge_l():
    assert rouge_l_chars("abc", "abc") == 1.0
    assert rouge_l_chars("", "abc") == 0.0 and rouge_l_chars("abc", "") == 0.0
    assert lcs_length("abcbdab", "bdcaba") == 4
    # "whatisit" vs "whatwasit": a common subsequence of 7 characters ("what" + "sit")
    assert rouge_l_chars("what is it", "What was it") == pytest.approx(2 * (7 / 8) * (7 / 9) / (7 / 8 + 7 / 9))
    assert rouge_l_chars("a b c", "abc") == 1.0  # whitespace is no token
    # a near-miss word scores 0 at word level and high at character level
    assert rouge_l_f1("colour", "color") == 0.0 and rouge_l_chars("colour", "color") > 0.9


def test_authors_metric_by_kind():
    assert authors_row_metric("classify") is exact_match
    assert authors_row_metric("generate") is rouge_l_chars
