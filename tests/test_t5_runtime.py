"""T5 (encoder-decoder) bundles in the torch-free runtime: continuous refill on the encoder-decoder
pair, EdgeModel's generate / stream / classify, the batch job, the server and refusals.

The pool's bookkeeping (refill, the self cache's holes and trimming, the cross cache's padding) is
first checked on a small exact stand-in for the pair (integer arithmetic in numpy, so a row's
logits are bit-equal however the batch around it looks); the rest runs tiny random T5 bundles
exported in-process."""

from __future__ import annotations

import numpy as np
import pytest

from alter_edge.runtime.contract import KVLayout, Seq2SeqLayout
from alter_edge.runtime.generate import SamplingParams
from alter_edge.runtime.seq2seq_decode import Seq2SeqPool, decode_seq2seq
from alter_edge.runtime.seq2seq_engine import Seq2SeqEngine

EOS, PAD, START, V, D = 1, 0, 0, 13, 4


class ExactPair:
    """A stand-in for the encoder-decoder runner with the graph contract's shapes and masks: a
    row's logits depend on its unmasked prompt tokens, its task, its own earlier tokens (the
    self cache's unmasked entries), the token fed and its position (the count of its mask's ones),
    all in small integers held in float32 (exact)."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.emb = rng.integers(-3, 4, (V, D)).astype(np.float32)
        self.head = rng.integers(-3, 4, (V, D)).astype(np.float32)
        self.layout = Seq2SeqLayout(KVLayout(1, 1, D))
        self.encodes: list[int] = []  # rows per encoder run

    def encode(self, ids, mask, task_ids):
        self.encodes.append(len(ids))
        k = (self.emb[ids] * mask[:, :, None] + task_ids[:, None, None])[:, None]  # [b, 1, e, D]
        return [k * mask[:, None, :, None], 2 * k * mask[:, None, :, None]]

    def empty_past(self, batch):
        return [np.zeros((batch, 1, 0, D), np.float32)] * 2

    def step(self, ids, mask, enc_mask, cross, past, task_ids):
        b, seq = ids.shape
        P = past[0].shape[2]
        assert mask.shape == (b, P + seq) and enc_mask.shape[1] == cross[0].shape[2]
        new = self.emb[ids][:, None]  # [b, 1, seq, D]
        keys = np.concatenate([past[0], new], axis=2)
        context = (cross[0][:, 0] * enc_mask[:, :, None]).sum(1)  # [b, D]
        logits = np.zeros((b, seq, V), np.float32)
        for t in range(seq):
            upto = mask[:, :P + t + 1]
            own = (keys[:, 0, :P + t + 1] * upto[:, :, None]).sum(1)
            pos = upto.sum(1)[:, None]
            h = context + own + pos * self.emb[ids[:, t]] + task_ids[:, None]
            logits[:, t] = h @ self.head.T % 17
        return logits, [keys, 2 * keys]


def _alone(pair, prompts, tids, params):
    out = []
    for p, t, q in zip(prompts, tids, params, strict=True):
        out.append([tok for _, tok in decode_seq2seq(pair, START, [p], [t], EOS, PAD, [q])])
    return out


def _together(pair, prompts, tids, params, slots):
    out: list[list[int]] = [[] for _ in prompts]
    for i, tok in decode_seq2seq(pair, START, prompts, tids, EOS, PAD, params, slots=slots):
        out[i].append(tok)
    return out


EXACT_PROMPTS = [[3, 4, 5], [6], [7, 8, 9, 10, 11, 12], [2, 2], [9, 3, 4, 5], [12, 11], [4] * 9, [5, 6, 7]]


@pytest.mark.parametrize("slots", [1, 2, 3, None])
def test_pool_refill_equals_rows_alone_on_the_exact_pair(slots):
    pair = ExactPair()
    tids = [i % 3 for i in range(len(EXACT_PROMPTS))]
    params = [SamplingParams(max_new_tokens=1 + (5 * i) % 9, ignore_eos=i % 2 == 0) for i in range(len(tids))]
    alone = _alone(pair, EXACT_PROMPTS, tids, params)
    assert len({len(a) for a in alone}) > 3
    pair.encodes.clear()
    assert _together(pair, EXACT_PROMPTS, tids, params, slots) == alone
    if slots in (2, 3):
        assert 1 in pair.encodes[1:], "a refilled row ran the encoder for itself"


def test_pool_trims_the_self_cache_to_the_oldest_running_row():
    pair = ExactPair()
    pool = Seq2SeqPool(pair, EOS, PAD, START, 2)
    pool.add("first", [3, 4], 0, SamplingParams(max_new_tokens=8, ignore_eos=True))
    for _ in range(5):
        list(pool.step())
    pool.add("late", [5, 6, 7, 8], 1, SamplingParams(max_new_tokens=10, ignore_eos=True))
    widths, enc = [], []
    while pool.busy:
        list(pool.step())
        widths.append(pool.mask.shape[1])
        enc.append(pool.enc_mask.shape[1])
    # 3 more steps with both rows (the late row's holes), then only the late row's own positions
    assert widths == [6, 7, 8, 4, 5, 6, 7, 8, 9, 0]
    assert enc == [4] * 9 + [0] and pool.past[0].shape[2] == 0


def test_pool_cancel_and_sampling_streams():
    pair = ExactPair()
    q = SamplingParams(max_new_tokens=6, temperature=0.8, seed=3, ignore_eos=True)
    a = _together(pair, EXACT_PROMPTS[:4], [0, 1, 2, 0], [q] * 4, None)
    b = _together(pair, EXACT_PROMPTS[:4], [0, 1, 2, 0], [q] * 4, 1)
    assert a == b  # each row draws from its own seeded stream, whatever the batch
    done = np.zeros(2, dtype=bool)
    got = []
    for i, tok in decode_seq2seq(pair, START, EXACT_PROMPTS[:2], [0, 1], EOS, PAD,
                                 SamplingParams(max_new_tokens=8, ignore_eos=True), done):
        got.append(i)
        if len(got) == 3:
            done[0] = True
    assert got.count(0) == 2 and got.count(1) == 8


def test_exact_pair_label_scores_equal_one_token_steps():
    pair = ExactPair()
    engine = Seq2SeqEngine(pair, START)
    labels = [[5, EOS], [7, 8, EOS], [EOS]]
    prompts, tids = EXACT_PROMPTS[:3], [0, 2, 1]
    got = engine.score_labels(prompts, tids, labels, PAD)
    from alter_edge.runtime.sampling import log_softmax
    for b, (p, t) in enumerate(zip(prompts, tids, strict=True)):
        for j, lab in enumerate(labels):
            cross = pair.encode(np.asarray([p]), np.ones((1, len(p)), np.int64), np.asarray([t]))
            past = [np.zeros((1, 1, 0, D), np.float32)] * 2
            total, fed = 0.0, [START, *lab[:-1]]
            for k, tok in enumerate(fed):
                logits, past = pair.step(np.asarray([[tok]]), np.ones((1, k + 1), np.int64),
                                         np.ones((1, len(p)), np.int64), cross, past, np.asarray([t]))
                total += log_softmax(logits[:, -1])[0, lab[k]]
            assert got[b, j] == pytest.approx(total, abs=1e-9)
