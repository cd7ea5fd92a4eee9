"""The runtime's engine on an encoder-decoder (T5) pair: what ``EdgeModel`` asks of a graph
(:class:`~runtime.decoder.Decoder`'s ``decode``, plus label scoring and a slot pool for the
server), on :mod:`runtime.seq2seq`'s primitive runner.

Label scoring: the encoder runs once per prompt; each label's tokens are the decoder's input
(``decoder_start_token_id`` then the label without its last token), one step over every
position, and the decoder graph's logits at all of them score the label (with its eos). Rows
are (prompt, label) pairs, the prompt's cross-cache rows repeated for each label, at most
``MAX_LABEL_ROWS`` in one step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from alter_edge.padding import length_mask, pad_rows

from .bundle import Bundle, GraphInfo, check_vocab
from .generate import SamplingParams
from .sampling import log_softmax
from .scoring import MAX_LABEL_ROWS
from .seq2seq_decode import Seq2SeqPool, decode_seq2seq, encode_rows


class Seq2SeqEngine:
    """Decode, score labels and run a slot pool on one encoder-decoder ``runner``; decoders start
    from ``start_id`` (the manifest's ``decoder_start_token_id``)."""

    def __init__(self, runner, start_id: int):
        self.runner, self.start_id = runner, int(start_id)

    def decode(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int], eos_id: int, pad_id: int,
               params: SamplingParams | Sequence[SamplingParams], done: np.ndarray | None = None,
               yield_eos: bool = False, slots: int | None = None) -> Iterator[tuple[int, int | None]]:
        return decode_seq2seq(self.runner, self.start_id, prompts, task_ids, eos_id, pad_id, params, done,
                              yield_eos, slots)

    def new_pool(self, eos_id: int, pad_id: int, size: int, max_len: int,
                 prefill_tokens: int | None = None) -> Seq2SeqPool:
        """A pool of ``size`` rows for the server; ``prefill_tokens`` does not apply (ignored)."""
        return Seq2SeqPool(self.runner, eos_id, pad_id, self.start_id, size, max_len)

    def score_labels(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int],
                     label_ids: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
        """(B, L) sums of log-probabilities of each label's tokens (with eos) after each prompt:
        ``training.evaluate.label_scores``' quantity for an encoder-decoder."""
        B, L = len(prompts), len(label_ids)
        tids = np.asarray(task_ids, np.int64)
        cross, enc_mask = encode_rows(self.runner, prompts, tids, pad_id)
        dec, lengths = pad_rows([[self.start_id, *lab[:-1]] for lab in label_ids], pad_id)
        target, _ = pad_rows([list(lab) for lab in label_ids], pad_id)
        dec_mask = length_mask(lengths, dec.shape[1])
        scores = np.zeros((B, L))
        pairs = np.asarray([(b, j) for b in range(B) for j in range(L)], np.int64)
        for lo in range(0, len(pairs), MAX_LABEL_ROWS):
            b, j = pairs[lo:lo + MAX_LABEL_ROWS].T
            logits = self._teacher_forced(dec[j], dec_mask[j], enc_mask[b], tids[b], [c[b] for c in cross])
            lp = np.take_along_axis(log_softmax(logits), target[j][:, :, None], axis=-1)[:, :, 0]
            scores[b, j] = np.where(dec_mask[j] > 0, lp, 0.0).sum(axis=1)
        return scores

    def _teacher_forced(self, ids: np.ndarray, mask: np.ndarray, enc_mask: np.ndarray, tids: np.ndarray,
                        cross: list[np.ndarray]) -> np.ndarray:
        """The decoder on whole right-padded sequences from an empty self cache: logits
        (n, seq, V) at every position."""
        logits, _ = self.runner.step(ids.astype(np.int64), mask, enc_mask, cross, self.runner.empty_past(len(ids)),
                                     tids)
        return logits


def open_seq2seq(bundle: Bundle, graph: GraphInfo, tokenizer, options, providers,
                 ort_format: bool = False) -> Seq2SeqEngine:
    """The engine on a T5 bundle's decoder ``graph`` and its encoder graph (same task and
    precision; their ``.ort`` twins with ``ort_format``), after both graphs' hash checks; the
    tokenizer must fit the logits, and a multi-task pair must run every task id of tasks.json
    (checked once, here)."""
    from .seq2seq import Seq2SeqRunner

    runner = Seq2SeqRunner.open(bundle, graph, options, providers, ort_format)
    check_vocab(bundle, tokenizer.get_vocab_size(with_added_tokens=True), runner.vocab_size, graph.path)
    return Seq2SeqEngine(runner, bundle.decoder_start_id)
