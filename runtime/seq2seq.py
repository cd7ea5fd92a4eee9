"""The encoder-decoder (T5) pair of a bundle, run with onnxruntime (torch-free): the primitives a
decode loop is built from, and one simple batch greedy loop.

The graphs follow ``runtime.contract.Seq2SeqLayout`` (docs/bundle-format.md). The API, stable:

``Seq2SeqRunner.from_bundle(root, task=None, precision=None, threads=None, providers=None,
verify=True)``
    Opens the encoder and decoder graphs of ``task`` (None: the multi-task pair, which takes
    ``task_ids``) at ``precision`` (None: int8, int4, fp32, the first the bundle has) after
    ``runtime.bundle.load_bundle``'s checks (schema, files, hashes, tasks) and one step with every
    task id of ``tasks.json`` (``check_task_ids``). ``runner.bundle`` is
    the loaded bundle, ``runner.graphs`` the two manifest entries (``{"encoder": ..., "decoder": ...}``).
``Seq2SeqRunner.open(bundle, decoder, options=None, providers=None, ort_format=False)``
    The same from an already loaded bundle and one of its decoder graphs (``GraphInfo``).
``Seq2SeqRunner(encoder_path, decoder_path, layout, decoder_start_token_id, eos_id, pad_id,
options=None, providers=None)``
    The same from two graph files.
``runner.takes_task_ids`` (bool), ``runner.vocab_size`` (int), ``runner.layout``,
``runner.decoder_start_token_id``, ``runner.eos_id``, ``runner.pad_id``.
``runner.encode(input_ids, attention_mask, task_ids=None) -> list[np.ndarray]``
    ``input_ids``/``attention_mask`` int64 ``[b, enc_seq]`` (right-padded prompts); returns the
    cross cache, one float32 ``[b, heads, enc_seq, d_kv]`` array per name of
    ``layout.cross_names`` (layer 0 key, layer 0 value, layer 1 key, ...). Computed once per
    prompt; rows are independent (a row's cache may be sliced out, or rows of equal ``enc_seq``
    stacked: pad ``enc_seq`` with zeros and the encoder mask with 0 to join different lengths).
``runner.empty_past(batch) -> list[np.ndarray]``
    The self cache before the first step: ``[b, heads, 0, d_kv]`` per name of ``layout.kv.past_names``.
``runner.step(input_ids, attention_mask, encoder_attention_mask, cross, past, task_ids=None)
-> (logits, present)``
    One decoder call: ``input_ids`` ``[b, seq]`` (the first step: ``decoder_start_token_id``),
    ``attention_mask`` ``[b, past_len + seq]`` (1 for every valid decoder position so far; a
    row's positions are the running count of its ones, so a 0 is a hole that is skipped),
    ``encoder_attention_mask`` ``[b, enc_seq]``; returns logits float32 ``[b, seq, vocab]`` (every
    position) and the present self cache ``[b, heads, past_len + seq, d_kv]`` per layer (the next
    step's ``past``).
``runner.greedy(prompts, task_ids=None, max_new_tokens=32, eos_id=None) -> list[list[int]]``
    One batch, no refill: encode the right-padded prompts, step from the start token, pick the
    argmax; a row stops at ``eos_id`` (default the bundle's; not returned; ``-1``: never) and is
    fed the pad token after it. Equal to ``training.evaluate.greedy_generate_seq2seq``.
``pad_prompts(prompts, pad_id) -> (input_ids, attention_mask)``: right padding.
``pad_cross(cross, encoder_attention_mask, enc_seq) -> (cross, encoder_attention_mask)``: a cross
cache widened to ``enc_seq`` encoder positions (zeros, mask 0), so caches of different prompt
lengths can be stacked into one batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from alter_edge.errors import BundleError, ConfigError
from alter_edge.padding import length_mask, pad_rows

from .contract import (
    ATTENTION_MASK,
    DECODER_ROLE,
    ENCODER_ATTENTION_MASK,
    ENCODER_ROLE,
    INPUT_IDS,
    SEQ2SEQ_CONTRACT,
    TASK_IDS,
    Seq2SeqLayout,
)
from .session import check_providers, session_options

PREFERENCE = ("int8", "int4", "fp32")
__all__ = ["Seq2SeqRunner", "pad_cross", "pad_prompts", "pick_pair"]


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``input_ids`` and ``attention_mask`` int64 ``[b, longest]``."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token")
    ids, lengths = pad_rows(prompts, pad_id)
    return ids, length_mask(lengths, ids.shape[1])


def pad_cross(cross: Sequence[np.ndarray], encoder_attention_mask: np.ndarray,
              enc_seq: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``cross`` and its mask widened to ``enc_seq`` positions: the new ones zero and masked out."""
    extra = enc_seq - encoder_attention_mask.shape[1]
    if extra < 0:
        raise ConfigError(f"cannot narrow a cross cache of {encoder_attention_mask.shape[1]} positions to {enc_seq}")
    wide = [np.pad(c, ((0, 0), (0, 0), (0, extra), (0, 0))) for c in cross]
    return wide, np.pad(np.asarray(encoder_attention_mask, np.int64), ((0, 0), (0, extra)))


def pick_pair(graphs: Sequence[dict], task: str | None, precision: str | None) -> dict[str, dict]:
    """The manifest entries of the encoder and decoder of ``task`` at ``precision`` (None: the
    first of int8, int4, fp32 the bundle has for it)."""
    mine = [g for g in graphs if g.get("task") == task]
    have = sorted({g.get("precision", "fp32") for g in mine}, key=PREFERENCE.index)
    if precision is None and have:
        precision = have[0]
    pair = {g.get("role"): g for g in mine if g.get("precision", "fp32") == precision}
    if ENCODER_ROLE not in pair or DECODER_ROLE not in pair:
        what = "the multi-task pair" if task is None else f"task {task!r}"
        raise BundleError(f"the bundle has no encoder/decoder graphs for {what} at {precision or 'any precision'} "
                          f"(precisions it has for it: {', '.join(have) or 'none'})")
    return pair


class Seq2SeqRunner:
    """An encoder graph and a decoder graph (module docstring: the API)."""

    def __init__(self, encoder_path: Path, decoder_path: Path, layout: Seq2SeqLayout, decoder_start_token_id: int,
                 eos_id: int, pad_id: int, options: ort.SessionOptions | None = None,
                 providers: Sequence[str] | None = None):
        options = options or session_options()
        providers = check_providers(providers)
        self.layout, self.decoder_start_token_id = layout, int(decoder_start_token_id)
        self.eos_id, self.pad_id = int(eos_id), int(pad_id)
        self.encoder = self._open(encoder_path, options, providers)
        self.decoder = self._open(decoder_path, options, providers)
        enc_in = {i.name for i in self.encoder.get_inputs()}
        dec_in = {i.name for i in self.decoder.get_inputs()}
        self.takes_task_ids = TASK_IDS in dec_in
        if (TASK_IDS in enc_in) != self.takes_task_ids:
            raise BundleError(f"{encoder_path} and {decoder_path}: one takes task_ids, the other not")
        self._check(encoder_path, enc_in, [o.name for o in self.encoder.get_outputs()],
                    layout.encoder_input_names(self.takes_task_ids), layout.encoder_output_names())
        dec_out = [o.name for o in self.decoder.get_outputs()]
        self._check(decoder_path, dec_in, dec_out, layout.decoder_input_names(self.takes_task_ids),
                    layout.decoder_output_names())
        self._dec_out = dec_out
        self.vocab_size = self.decoder.get_outputs()[0].shape[-1]
        self.bundle = None
        self.graphs: dict[str, dict] = {}

    @staticmethod
    def _open(path: Path, options, providers) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own types
            raise BundleError(f"{path}: onnxruntime cannot load this graph ({e})") from e

    @staticmethod
    def _check(path, inputs: set[str], outputs: list[str], want_in: list[str], want_out: list[str]) -> None:
        missing = sorted(set(want_in) - inputs) + sorted(set(want_out) - set(outputs))
        extra = sorted(inputs - set(want_in))
        if missing or extra:
            raise BundleError(f"{path}: the graph does not fit the manifest's seq2seq layout (missing "
                              f"{', '.join(missing[:4]) or 'nothing'}; unexpected inputs {', '.join(extra[:4]) or 'none'})")

    @classmethod
    def from_bundle(cls, root: str | Path, task: str | None = None, precision: str | None = None,
                    threads: int | None = None, providers: Sequence[str] | None = None,
                    verify: bool | str = True) -> Seq2SeqRunner:
        from .bundle import load_bundle

        bundle = load_bundle(root, verify=verify)
        m = bundle.manifest
        if m.architecture != "encoder-decoder" or m.seq2seq is None:
            raise BundleError(f"{bundle.root}: not an encoder-decoder bundle (architecture "
                              f"{m.architecture or 'decoder'!r}); open it with alter_edge.runtime.EdgeModel")
        if m.graph_contract != SEQ2SEQ_CONTRACT:
            raise BundleError(f"{bundle.root}: graph_contract {m.graph_contract!r} is not {SEQ2SEQ_CONTRACT!r}")
        pair = pick_pair(m.graphs, task, precision)
        decoder = next(gi for gi in bundle.graphs if gi.path == pair[DECODER_ROLE]["path"])
        runner = cls.open(bundle, decoder, session_options(threads), providers)
        runner.graphs = pair
        return runner

    @classmethod
    def open(cls, bundle, decoder, options: ort.SessionOptions | None = None,
             providers: Sequence[str] | None = None, ort_format: bool = False) -> Seq2SeqRunner:
        """The pair of a loaded bundle's decoder graph (a ``runtime.bundle.GraphInfo``) and its
        encoder graph (``Bundle.encoder_for``; their ``.ort`` twins with ``ort_format``), after both
        graphs' hash checks and one step with every task id of ``tasks.json``."""
        encoder = bundle.encoder_for(decoder)
        paths = [bundle.check_graph(g, ort_format) for g in (encoder, decoder)]
        runner = cls(paths[0], paths[1], bundle.seq2seq, bundle.decoder_start_id, bundle.eos_id,
                     bundle.pad_id, options, providers)
        try:
            runner.check_task_ids(len(bundle.tasks))
        except BundleError as e:
            raise BundleError(f"{bundle.root}: {decoder.path}: {e}") from e
        runner.bundle = bundle
        return runner

    def check_task_ids(self, n_tasks: int) -> None:
        """Both graphs run task ids ``0..n_tasks-1`` (a multi-task pair; one token a row): an id past
        the graphs' task table is a BundleError here, not an onnxruntime error mid-request."""
        if not self.takes_task_ids or n_tasks < 1:
            return
        ids, mask, tids = np.zeros((n_tasks, 1), np.int64), np.ones((n_tasks, 1), np.int64), np.arange(n_tasks)
        try:
            cross = self.encode(ids, mask, tids)
            self.step(ids, mask, mask, cross, self.empty_past(n_tasks), tids)
        except Exception as e:  # onnxruntime raises its own types (a Gather index out of range)
            raise BundleError(f"the pair cannot run task ids 0..{n_tasks - 1} of tasks.json "
                              f"({str(e).splitlines()[0][:160]}): tasks.json does not belong to these graphs") from e

    # -- primitives -------------------------------------------------------------------------
    def _task_feed(self, task_ids, batch: int) -> dict:
        if not self.takes_task_ids:
            return {}
        if task_ids is None:
            raise ConfigError("this is the multi-task pair: task_ids are required")
        tids = np.asarray(task_ids, np.int64).reshape(-1)
        if tids.shape[0] != batch:
            raise ConfigError(f"{tids.shape[0]} task ids for {batch} rows")
        return {TASK_IDS: tids}

    def encode(self, input_ids, attention_mask, task_ids=None) -> list[np.ndarray]:
        ids = np.ascontiguousarray(input_ids, np.int64)
        feed = {INPUT_IDS: ids, ATTENTION_MASK: np.ascontiguousarray(attention_mask, np.int64),
                **self._task_feed(task_ids, ids.shape[0])}
        return self.encoder.run(self.layout.encoder_output_names(), feed)

    def empty_past(self, batch: int) -> list[np.ndarray]:
        kv = self.layout.kv
        return [np.zeros((batch, kv.num_kv_heads, 0, kv.head_dim), np.float32) for _ in kv.past_names]

    def step(self, input_ids, attention_mask, encoder_attention_mask, cross: Sequence[np.ndarray],
             past: Sequence[np.ndarray], task_ids=None) -> tuple[np.ndarray, list[np.ndarray]]:
        ids = np.ascontiguousarray(input_ids, np.int64)
        feed = {INPUT_IDS: ids, ATTENTION_MASK: np.ascontiguousarray(attention_mask, np.int64),
                ENCODER_ATTENTION_MASK: np.ascontiguousarray(encoder_attention_mask, np.int64),
                **self._task_feed(task_ids, ids.shape[0])}
        feed.update(zip(self.layout.kv.past_names, past, strict=True))
        feed.update(zip(self.layout.cross_names, cross, strict=True))
        out = self.decoder.run(self._dec_out, feed)
        return out[0], list(out[1:])

    # -- one batch, greedy ----------------------------------------------------------------------
    def greedy(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int] | None = None,
               max_new_tokens: int = 32, eos_id: int | None = None) -> list[list[int]]:
        eos = self.eos_id if eos_id is None else eos_id
        ids, enc_mask = pad_prompts(prompts, self.pad_id)
        b = ids.shape[0]
        cross = self.encode(ids, enc_mask, task_ids)
        past = self.empty_past(b)
        cur = np.full((b, 1), self.decoder_start_token_id, np.int64)
        out: list[list[int]] = [[] for _ in range(b)]
        done = np.zeros(b, bool)
        for n in range(max_new_tokens):
            logits, past = self.step(cur, np.ones((b, n + 1), np.int64), enc_mask, cross, past, task_ids)
            nxt = logits[:, -1].argmax(-1)
            for i in np.flatnonzero(~done):
                if int(nxt[i]) == eos:
                    done[i] = True
                else:
                    out[i].append(int(nxt[i]))
            if done.all():
                break
            cur = np.where(done, self.pad_id, nxt)[:, None].astype(np.int64)
        return out
