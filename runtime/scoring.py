"""Label scoring for classify tasks: the log-likelihood of each label's tokens after the prompt.

The prompt batch runs once; each label's tokens then run as one-token steps on the prompt's KV
cache (shared, not copied: a label's entries sit past the prompt and the next label overwrites
them), so scoring L labels costs one prompt pass plus one small step per label token beyond the
first: cheaper than free generation, and the answer is always one of the labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .generate import log_softmax, right_pad
from .session import GraphRunner


def score_labels(runner: GraphRunner, prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
                 label_ids: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
    """(B, L) sums of log-probabilities of each label's tokens (with eos) after each prompt;
    the same quantity as ``training.evaluate.label_scores``."""
    ids, lengths = right_pad(prompts, pad_id)
    B = ids.shape[0]
    tids = np.asarray(task_ids, dtype=np.int64)
    longest = max(len(lab) for lab in label_ids)
    cache = runner.new_cache(B, ids.shape[1] + longest)
    logits = runner.step(ids, lengths, tids, cache)
    first = log_softmax(logits[np.arange(B), lengths - 1])  # (B, V): each label's first token
    scores = np.empty((B, len(label_ids)), dtype=np.float64)
    for j, lab in enumerate(label_ids):
        s = first[:, lab[0]].copy()
        # teacher-forced one-token steps from the end of the prompt; the next label overwrites
        # these cache entries, so the prompt's cache is shared, never copied
        for k in range(len(lab) - 1):
            step = runner.step(np.full((B, 1), lab[k], np.int64), lengths + k + 1, tids, cache)[:, 0]
            s += log_softmax(step)[:, lab[k + 1]]
        scores[:, j] = s
    return scores


def label_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax over the label log-likelihoods, row-wise."""
    return np.exp(log_softmax(scores))
