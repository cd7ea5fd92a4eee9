"""Label scoring for classify tasks: the log-likelihood of each label's tokens after the prompt.

The prompt batch runs once (``GraphRunner.prefill``: a prompt starting with its task's cached
prefix feeds only the rest). A label's first token is scored from the prompt's logits; its
later tokens are teacher-forced one-token steps on the prompt's KV cache. Labels with later
tokens are scored together: the prompt's cache rows are copied once per label into one cache
of ``B x labels`` rows, and ``max(label length) - 1`` one-token steps over all of them score
every label at once (a shorter label's extra steps are ignored). One label with later tokens
runs on the prompt's cache itself (shared, not copied). Scoring L labels costs one prompt pass
plus a few small steps: cheaper than free generation, and the answer is always one of the
labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .generate import log_softmax
from .session import GraphRunner

MAX_LABEL_ROWS = 64  # at most this many rows (prompts x labels) in one batched label step


def score_labels(runner: GraphRunner, prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
                 label_ids: Sequence[Sequence[int]], pad_id: int, batched: bool = True) -> np.ndarray:
    """(B, L) sums of log-probabilities of each label's tokens (with eos) after each prompt;
    the same quantity as ``training.evaluate.label_scores``. ``batched=False``: one label after
    the other on the shared prompt cache (same scores; the benchmark's reference)."""
    lengths = np.asarray([len(p) for p in prompts], dtype=np.int64)
    B, width = len(prompts), int(lengths.max())
    tids = np.asarray(task_ids, dtype=np.int64)
    longest = max(len(lab) for lab in label_ids)
    cache = runner.new_cache(B, width + longest)
    logits = runner.prefill(prompts, tids, cache, np.arange(B), pad_id)  # the task's cached prefix too
    first = log_softmax(logits)  # (B, V): the distribution of each label's first token
    scores = np.stack([first[:, lab[0]] for lab in label_ids], axis=1)  # (B, L) float64
    later = [j for j, lab in enumerate(label_ids) if len(lab) > 1]
    per = max(1, MAX_LABEL_ROWS // B) if batched else 1  # labels per group (a group of one: no copy)
    for g in range(0, len(later), per):
        group = later[g:g + per]
        if len(group) == 1:
            _score_on_shared_cache(runner, cache, lengths, tids, label_ids[group[0]], scores[:, group[0]])
        else:
            _score_replicated(runner, cache, width, lengths, tids, [label_ids[j] for j in group],
                              scores, group, pad_id)
    return scores


def _score_on_shared_cache(runner: GraphRunner, cache, lengths: np.ndarray, tids: np.ndarray,
                           lab: Sequence[int], out: np.ndarray) -> None:
    """Add one label's later tokens to ``out`` (B,): teacher-forced one-token steps from the end
    of the prompt; the next label overwrites these cache entries, so the prompt's cache is
    shared, never copied."""
    B = len(lengths)
    for k in range(len(lab) - 1):
        step = runner.step(np.full((B, 1), lab[k], np.int64), lengths + k + 1, tids, cache)[:, 0]
        out += log_softmax(step)[:, lab[k + 1]]


def _score_replicated(runner: GraphRunner, cache, prompt_len: int, lengths: np.ndarray, tids: np.ndarray,
                      labels: Sequence[Sequence[int]], scores: np.ndarray, columns: Sequence[int],
                      pad_id: int) -> None:
    """Add several labels' later tokens to ``scores[:, columns]`` at once: row ``j * B + b`` of a
    new cache holds prompt ``b``'s entries for label ``j``; each step feeds every row its label's
    next token (a label already done feeds pad, its logits ignored)."""
    B, J = len(lengths), len(labels)
    steps = max(len(lab) for lab in labels) - 1
    src = np.tile(np.arange(B), J)
    rep = runner.new_cache(B * J, prompt_len + steps)
    rep.write_rows(np.arange(B * J), cache, src, prompt_len)
    rep_lengths, rep_tids = lengths[src], tids[src]
    feed = np.full((J, steps + 1), pad_id, dtype=np.int64)  # label j's token k at [j, k]
    for j, lab in enumerate(labels):
        feed[j, :len(lab)] = lab
    label_len = np.asarray([len(lab) for lab in labels])
    rows = np.arange(B * J)  # the replicated rows still in the cache
    for k in range(steps):
        lab_of = rows // B
        step = runner.step(feed[lab_of, k][:, None], rep_lengths[rows] + k + 1, rep_tids[rows], rep)[:, 0]
        live = label_len[lab_of] > k + 1  # rows whose label has a token k + 1
        target = feed[lab_of[live], k + 1]
        lp = log_softmax(step[live])[np.arange(len(target)), target]
        scores[rows[live] % B, np.asarray(columns)[lab_of[live]]] += lp  # each (prompt, label) once
        done = label_len[lab_of] <= k + 2  # no token to feed at the next step
        if k + 1 < steps and 4 * int(done.sum()) >= len(rows):
            keep = np.flatnonzero(~done)
            rep, rows = rep.select_rows(keep), rows[keep]


def label_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax over the label log-likelihoods, row-wise."""
    return np.exp(log_softmax(scores))
