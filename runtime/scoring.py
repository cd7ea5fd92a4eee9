"""Label scoring for classify tasks: the log-likelihood of each label's tokens after the prompt.

The prompt batch runs once; each label's tokens then run as one short step on the prompt's KV
cache (reused, not copied), so scoring L labels costs one prompt pass plus L small passes:
cheaper than free generation, and the answer is always one of the labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .generate import left_pad, log_softmax
from .session import GraphRunner


def score_labels(runner: GraphRunner, prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
                 label_ids: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
    """(B, L) sums of log-probabilities of each label's tokens (with eos) after each prompt;
    the same quantity as ``training.evaluate.label_scores``."""
    ids, mask = left_pad(prompts, pad_id)
    B = ids.shape[0]
    tids = np.asarray(task_ids, dtype=np.int64)
    logits, past = runner.step(ids, mask, tids, runner.empty_past(B))
    first = log_softmax(logits[:, -1])  # (B, V): the distribution of each label's first token
    scores = np.empty((B, len(label_ids)), dtype=np.float64)
    for j, lab in enumerate(label_ids):
        s = first[:, lab[0]].copy()
        if len(lab) > 1:
            chunk = np.tile(np.asarray(lab[:-1], dtype=np.int64), (B, 1))  # (B, n-1)
            m = np.concatenate([mask, np.ones((B, len(lab) - 1), dtype=np.int64)], axis=1)
            lg, _ = runner.step(chunk, m, tids, past)
            lp = log_softmax(lg)  # (B, n-1, V)
            s += np.take_along_axis(lp, np.asarray(lab[1:])[None, :, None].repeat(B, 0), -1)[..., 0].sum(-1)
        scores[:, j] = s
    return scores


def label_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax over the label log-likelihoods, row-wise."""
    return np.exp(log_softmax(scores))
