"""The Python side of a decode step gives what it gave before its costs were cut: a seeded
picker samples the same tokens as the full-sort implementation it replaced, incremental
detokenization gives the text that decoding all ids at once gives (multi-byte characters split
across tokens, stop strings, leading whitespace), and a step that binds task_ids once and
returns its output buffer gives the logits of a fresh binding."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from alter_edge.runtime.generate import RowText, SamplingParams, TokenPicker, nucleus
from alter_edge.testing import TINY_ROWS


# -- the token picker -----------------------------------------------------------------------
class FullSortPicker(TokenPicker):
    """The picker as it was: top_p by a float64 argsort of the whole vocabulary per row."""

    def __call__(self, logits, rows):
        if self.entropy is None:
            return logits.argmax(-1).astype(np.int64)
        x = logits.astype(np.float64) / self.p.temperature
        V = x.shape[-1]
        if 0 < self.p.top_k < V:
            kth = np.partition(x, V - self.p.top_k, axis=-1)[:, V - self.p.top_k, None]
            x = np.where(x < kth, -np.inf, x)
        probs = np.exp(x - x.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        if self.p.top_p < 1.0:
            order = np.argsort(-probs, axis=-1)
            sorted_p = np.take_along_axis(probs, order, -1)
            drop_sorted = (np.cumsum(sorted_p, -1) - sorted_p) >= self.p.top_p
            drop = np.zeros_like(drop_sorted)
            np.put_along_axis(drop, order, drop_sorted, -1)
            probs = np.where(drop, 0.0, probs)
        out = np.empty(len(probs), dtype=np.int64)
        for i, (p, r) in enumerate(zip(probs, rows, strict=True)):
            c = np.cumsum(p)
            out[i] = min(int(np.searchsorted(c, self.rng(int(r)).random() * c[-1], side="right")), V - 1)
        return out


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (0.7, 0, 0.9), (1.0, 0, 0.5), (2.0, 0, 0.95),  # flat: the nucleus needs thousands of candidates
    (1.0, 40, 0.8), (0.8, 500, 0.99), (1.3, 20, 1.0), (1.0, 0, 1.0), (0.05, 0, 0.3),
])
def test_seeded_picker_samples_the_full_sort_pickers_tokens(temperature, top_k, top_p):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=1234)
    new, old = TokenPicker(params), FullSortPicker(params)
    rng = np.random.default_rng(7)
    rows = np.array([0, 3, 5, 6])
    for step in range(12):
        scale = (0.5, 3.0, 8.0)[step % 3]  # flat to peaked
        logits = (rng.standard_normal((4, 49152)) * scale).astype(np.float32)
        before = logits.copy()
        got, want = new(logits, rows), old(logits, rows)
        assert got.tolist() == want.tolist(), step
        assert np.array_equal(logits, before)  # the caller's buffer is not touched


def test_nucleus_is_the_smallest_most_likely_set():
    rng = np.random.default_rng(0)
    for V in (1, 2, 7, 64, 65, 300, 5000):
        for _ in range(20):
            p = rng.dirichlet(np.full(V, rng.choice([0.05, 1.0, 20.0])))
            top_p = float(rng.uniform(0.05, 1.0))
            order = np.argsort(-p, kind="stable")
            before = np.cumsum(p[order]) - p[order]
            want = np.sort(order[before < top_p])
            assert nucleus(p, top_p, first=4).tolist() == want.tolist()
    tie = np.full(2000, 0.05 / 1997)
    tie[[5, 7, 9]] = 0.3, 0.35, 0.3
    assert nucleus(tie, 0.6).tolist() == [5, 7]  # equal candidates at the edge: the lower id first


# -- incremental detokenization -------------------------------------------------------------
class FullDecodeRowText:
    """RowText as it was: every push decodes all of the row's ids."""

    def __init__(self, tokenizer, stop):
        self.tok, self.stop, self.ids = tokenizer, stop, []
        self.text, self.emitted, self.stopped = "", 0, False

    def push(self, token_id):
        self.ids.append(token_id)
        text = self.tok.decode(self.ids, skip_special_tokens=True).lstrip()
        cut = min((k for k in (text.find(s) for s in self.stop) if k >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self._flush(len(self.text))
        self.text = text
        safe = len(text)
        if text.endswith("\ufffd"):
            safe = len(text.rstrip("\ufffd"))
        hold = max((n for s in self.stop for n in range(1, min(len(s), safe + 1))
                    if text[:safe].endswith(s[:n])), default=0)
        return self._flush(safe - hold)

    def finish(self):
        return self._flush(len(self.text))

    def _flush(self, upto):
        upto = max(upto, self.emitted)
        piece = self.text[self.emitted:upto]
        self.emitted = upto
        return piece


MULTIBYTE = ["café naïve über", "日本語のテキスト", "emoji 🙂🚀 ok", "  leading  spaces", "ÆØÅ æøå ß",
             "stop here END then more", "a\nb\n\nc"]


@pytest.fixture(scope="module")
def byte_bpe() -> Tokenizer:
    """A byte-level BPE tokenizer (as SmolLM2's): every byte is a token, so random ids split
    multi-byte characters and make invalid UTF-8."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([r["input"] for r in TINY_ROWS] + MULTIBYTE * 3,
                            trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<eos>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


@pytest.fixture(scope="module")
def bundle_tokenizer(tiny_tokenizer_dir) -> Tokenizer:
    """The tokenizer the tiny bundles ship (word-level)."""
    return Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))


def _replay(tok, ids, stop):
    """(pieces, final text, stopped, tokens pushed) for the new and the old RowText."""
    out = []
    for cls in (RowText, FullDecodeRowText):
        rt, pieces, n = cls(tok, stop), [], 0
        for t in ids:
            pieces.append(rt.push(t))
            n += 1
            if rt.stopped:
                break
        else:
            pieces.append(rt.finish())
        out.append((pieces, rt.text, rt.stopped, n))
    return out


STOPS = [(), ("END",), ("\n\n",), (" the", "🙂"), ("é", "x y"), ("\ufffd",), ("ab", "b", "日本")]


@pytest.mark.parametrize("stop", STOPS)
def test_incremental_text_equals_decoding_all_ids(byte_bpe, bundle_tokenizer, stop):
    rng = np.random.default_rng(abs(hash(stop)) % 2**32)
    for tok in (byte_bpe, bundle_tokenizer):
        V = tok.get_vocab_size(with_added_tokens=True)
        streams = [tok.encode(t, add_special_tokens=False).ids for t in MULTIBYTE]
        streams.append(tok.encode(" " + " ".join(MULTIBYTE), add_special_tokens=False).ids)
        streams += [rng.integers(0, V, int(rng.integers(1, 120))).tolist() for _ in range(40)]
        for ids in streams:
            new, old = _replay(tok, ids, stop)
            assert new == old, (stop, ids)
            pieces, text, stopped, _ = new
            assert "".join(pieces) == text
            if not stopped:
                assert text == tok.decode(ids, skip_special_tokens=True).lstrip()


def test_a_character_split_over_tokens_is_held_until_whole(byte_bpe):
    ids = [byte_bpe.token_to_id(c) for c in pre_tokenizers.ByteLevel.alphabet()]
    assert None not in ids
    byte_id = {b: byte_bpe.token_to_id(_byte_char(b)) for b in range(256)}
    rt = RowText(byte_bpe, ())
    pieces = [rt.push(byte_id[b]) for b in "a€".encode()]  # 61 e2 82 ac
    assert pieces == ["a", "", "", "€"]
    assert rt.text == "a€" and rt.finish() == ""


def _byte_char(b: int) -> str:
    """The ByteLevel alphabet's character for byte ``b`` (GPT-2's bytes_to_unicode)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))


def test_long_rows_decode_a_few_ids_per_token(byte_bpe):
    """A token decodes its context group and itself, not the whole row (the old push was O(n^2))."""
    calls = []

    class Counting:
        def decode(self, ids, skip_special_tokens=True):
            calls.append(len(ids))
            return byte_bpe.decode(ids, skip_special_tokens=skip_special_tokens)

    ids = byte_bpe.encode(" ".join(MULTIBYTE * 20), add_special_tokens=False).ids
    rt = RowText(Counting(), ("NEVER",))
    for t in ids:
        rt.push(t)
    assert len(ids) > 500 and max(calls) <= 8
    assert rt.text == byte_bpe.decode(ids).lstrip()


# -- the graph step -------------------------------------------------------------------------
def test_step_binds_task_ids_once_and_returns_the_same_logits(edge_model):
    runner = edge_model.runner_for(edge_model.tasks.names)  # the multi-task graph
    assert runner.takes_task_ids
    n = len(edge_model.tasks)
    prompts = np.array([[5, 6, 7, 8]] * 2, np.int64)
    lengths = np.array([4, 3], np.int64)

    def run(task_rows, reuse: bool):
        """Logits of a prompt step and three one-token steps, task ids changing per step."""
        cache = runner.new_cache(2, 8)
        out = [runner.step(prompts, lengths, np.asarray(task_rows[0]), cache, copy=not reuse).copy()]
        lens = lengths.copy()
        for k, tids in enumerate(task_rows[1:]):
            lens = lens + 1
            c = cache if reuse else runner.new_cache(2, 8)
            if not reuse:  # a fresh cache, bound from nothing, replaying the steps so far
                runner.step(prompts, lengths, np.asarray(task_rows[0]), c)
                ll = lengths.copy()
                for j in range(k):
                    ll = ll + 1
                    runner.step(np.full((2, 1), 9 + j, np.int64), ll, np.asarray(task_rows[1 + j]), c)
            out.append(runner.step(np.full((2, 1), 9 + k, np.int64), lens, np.asarray(tids), c,
                                   copy=not reuse).copy())
        return out

    seq = [[0, n - 1], [0, n - 1], [n - 1, 0], [1 % n, 1 % n]]
    reused, fresh = run(seq, True), run(seq, False)
    for a, b in zip(reused, fresh, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(reused[1], reused[2])  # the swapped task ids were fed


def test_step_without_copy_returns_the_cache_buffer(edge_model):
    runner = edge_model.runner_for(edge_model.tasks.names)
    cache = runner.new_cache(1, 4)
    a = runner.step(np.array([[3]]), np.array([1]), np.array([0]), cache, copy=False)
    b = runner.step(np.array([[4]]), np.array([2]), np.array([0]), cache, copy=False)
    assert a is b  # no copy: the next step's logits land in the same buffer
    c = runner.step(np.array([[5]]), np.array([3]), np.array([0]), cache)
    assert c is not b and np.array_equal(c, b)
