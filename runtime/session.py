"""onnxruntime sessions and one forward step of a bundle graph.

A :class:`GraphRunner` owns one ``InferenceSession`` and knows the graph's I/O names from the
manifest's KV layout. The session may run from several threads at once and the runner keeps no
per-call state (each request owns its :class:`KVCache`), so one runner serves concurrent
requests.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from alter_edge.errors import BundleError, ConfigError
from alter_edge.io import shown
from alter_edge.padding import pad_rows

from .contract import ATTENTION_MASK, INPUT_IDS, LOGITS, TASK_IDS, KVLayout
from .prefix import PrefixCache

log = logging.getLogger(__name__)

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def check_providers(providers: Sequence[str] | None) -> list[str]:
    """The requested providers, each checked against what this onnxruntime build has."""
    available = ort.get_available_providers()
    if not providers:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):  # one provider, not its letters
        providers = [providers]
    if any(not isinstance(p, str) for p in providers):
        raise ConfigError(f"providers must be provider names (strings), got {shown(providers)}; "
                          f"available: {', '.join(available)}")
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise ConfigError(
            f"execution provider(s) {', '.join(unknown)} not available in this onnxruntime; "
            f"available: {', '.join(available)}"
        )
    return list(providers)


MAX_THREADS = 1024  # onnxruntime takes a C int; far above any core count this runs on


def session_options(threads: int | None = None, optimization: str = "all",
                    spinning: bool = True) -> ort.SessionOptions:
    """``threads`` = intra-op threads (None: onnxruntime's default, one per core);
    ``spinning=False`` stops idle worker threads busy-waiting (kinder on a shared CPU)."""
    if optimization not in OPT_LEVELS:
        raise ConfigError(f"graph optimization {shown(optimization)} is not one of {', '.join(OPT_LEVELS)}")
    if threads is not None and (not isinstance(threads, numbers.Integral) or isinstance(threads, bool)
                                or not 1 <= threads <= MAX_THREADS):
        raise ConfigError(f"threads must be an integer in 1..{MAX_THREADS} (or None: one per core), got {shown(threads)}")
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[optimization]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads is not None:
        so.intra_op_num_threads = threads
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class KVCache:
    """One request's KV cache: per layer a key and a value buffer ``[batch, kv_heads, max_len,
    head_dim]``, allocated once. Bound as both the past input and the present output of every
    step, so GroupQueryAttention writes each row's new entries in place: no step allocates or
    copies the cache. ``arrays`` are the numpy buffers the OrtValues share memory with (a row
    may be written there directly); ``logits`` is the step's output buffer ``[batch, 1, vocab]``,
    also allocated once. A cache keeps the IO binding of the runner it last ran with, so a step
    binds only its new tokens and the mask."""

    def __init__(self, kv: KVLayout, batch: int, max_len: int, arrays: list[np.ndarray] | None = None):
        shape = (batch, kv.num_kv_heads, max_len, kv.head_dim)
        self.arrays = arrays if arrays is not None else [np.zeros(shape, np.float32) for _ in kv.past_names]
        self.values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]
        self.kv, self.batch, self.max_len = kv, batch, max_len
        self._io = None  # (session, IOBinding, logits array) once bound
        self._mask = np.zeros(batch * max_len, np.int64)  # the attention mask's storage
        self._positions = np.arange(max_len, dtype=np.int64)[None, :]  # compared with lengths: the mask
        self._tasks = np.zeros(batch, np.int64)  # the task_ids input's storage, bound once
        self._tasks_bound = False
        self._rows: dict[int, KVCache] = {}  # row -> a one-row cache over that row's memory

    def row(self, j: int) -> KVCache:
        """A one-row cache over row ``j`` of this one (views, no copy): a step on it writes row
        ``j``'s entries in place (a prompt step with past context runs one row at a time)."""
        r = self._rows.get(j)
        if r is None:
            r = self._rows[j] = KVCache(self.kv, 1, self.max_len, [a[j:j + 1] for a in self.arrays])
        return r

    def select_rows(self, rows: np.ndarray) -> KVCache:
        """A new cache holding only ``rows`` (a copy; used when finished rows leave a batch)."""
        return KVCache(self.kv, len(rows), self.max_len, [np.ascontiguousarray(a[rows]) for a in self.arrays])

    def binding(self, session: ort.InferenceSession, vocab: int) -> tuple[ort.IOBinding, np.ndarray]:
        if self._io is None or self._io[0] is not session:
            io = session.io_binding()
            logits = np.empty((self.batch, 1, vocab), np.float32)
            io.bind_ortvalue_output(LOGITS, ort.OrtValue.ortvalue_from_numpy(logits))
            for past, present, v in zip(self.kv.past_names, self.kv.present_names, self.values, strict=True):
                io.bind_ortvalue_input(past, v)
                io.bind_ortvalue_output(present, v)
            self._io = (session, io, logits)
            self._tasks_bound = False
        return self._io[1], self._io[2]

    def bind_task_ids(self, task_ids: np.ndarray) -> None:
        """The task_ids input is bound once, an OrtValue over this cache's own buffer; each step
        writes its ids into that buffer in place (the same ids every step until a slot is
        refilled), so no step binds it again."""
        self._tasks[:] = task_ids
        if not self._tasks_bound:
            self._io[1].bind_ortvalue_input(TASK_IDS, ort.OrtValue.ortvalue_from_numpy(self._tasks))
            self._tasks_bound = True

    def mask(self, lengths: np.ndarray, width: int) -> np.ndarray:
        """The attention mask ``[batch, width]`` for these row lengths (a view of one buffer)."""
        m = self._mask[:self.batch * width].reshape(self.batch, width)  # contiguous
        np.less(self._positions[:, :width], lengths[:, None], out=m, casting="unsafe")
        return m

    def write_rows(self, slots: np.ndarray, src: KVCache, rows: np.ndarray, length: int) -> None:
        """Copy positions ``[0, length)`` of ``src``'s ``rows`` into this cache's ``slots``, in
        place (a refilled slot takes a new row's prompt entries; label scoring replicates a
        prompt's rows)."""
        for dst, a in zip(self.arrays, src.arrays, strict=True):
            dst[slots, :, :length] = a[rows, :, :length]


def _check_kv_shapes(path: Path, inputs: Sequence, kv: KVLayout) -> None:
    """Each past input's fixed dims ``[batch, num_kv_heads, seq, head_dim]`` are the manifest's."""
    past = set(kv.past_names)
    for i in inputs:
        if i.name not in past:
            continue
        for axis, name in ((1, "num_kv_heads"), (3, "head_dim")):
            dim = i.shape[axis] if len(i.shape) == 4 else None
            if isinstance(dim, int) and dim != getattr(kv, name):
                raise BundleError(f"{path}: input {i.name} has {dim} at axis {axis} but manifest.json's "
                                  f"kv_cache.{name} is {getattr(kv, name)}: the manifest does not describe this graph")
        if len(i.shape) != 4:
            raise BundleError(f"{path}: input {i.name} has {len(i.shape)} axes, not 4 "
                              "(batch, num_kv_heads, seq, head_dim)")


class GraphRunner:
    """One graph (docs/bundle-format.md, ``runtime.contract``): ``step(input_ids, lengths,
    task_ids, cache)`` -> logits. ``lengths[b]`` is row b's number of valid tokens after this
    step's tokens (a right-padded prompt: its own length; a decode step: one more than before)."""

    def __init__(self, path: Path, kv: KVLayout, options: ort.SessionOptions, providers: list[str],
                 prefixes: PrefixCache | None = None):
        self.path = Path(path)
        self.kv = kv
        self.prefixes = prefixes  # the per-task prefix cache :meth:`prefill` uses (None: off)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{path}: onnxruntime cannot load this graph ({e})") from e
        names = {i.name for i in self.session.get_inputs()}
        self.takes_task_ids = TASK_IDS in names
        expected = set(kv.input_names(self.takes_task_ids))
        missing = sorted(expected - names)
        out_names = [o.name for o in self.session.get_outputs()]
        missing += sorted(set(kv.output_names()) - set(out_names))
        if missing:
            raise BundleError(f"{path}: graph lacks input/output(s) {', '.join(missing[:4])} "
                              "that manifest.json's kv_cache layout names")
        extra = sorted(names - expected)
        if extra:  # e.g. kv_cache.num_layers smaller than the graph's: inputs nobody would feed
            raise BundleError(f"{path}: graph takes input(s) {', '.join(extra[:4])} that manifest.json's "
                              f"kv_cache layout does not name (num_layers {kv.num_layers})")
        _check_kv_shapes(path, self.session.get_inputs(), kv)
        vocab = self.session.get_outputs()[out_names.index(LOGITS)].shape[-1]
        self.vocab_size = vocab if isinstance(vocab, int) else None
        log.info("loaded %s (task_ids input: %s)", path, self.takes_task_ids)

    def check_task_ids(self, n_tasks: int) -> None:
        """One one-token step with every task id ``0..n_tasks-1`` (a multi-task graph): an id past
        the graph's task table is a BundleError here, not an onnxruntime error mid-request."""
        if not self.takes_task_ids or n_tasks < 1:
            return
        try:
            self.step(np.zeros((n_tasks, 1), np.int64), np.ones(n_tasks, np.int64),
                      np.arange(n_tasks, dtype=np.int64), self.new_cache(n_tasks, 1))
        except Exception as e:  # onnxruntime raises its own types (a Gather index out of range)
            raise BundleError(f"{self.path}: the graph cannot run task ids 0..{n_tasks - 1} of tasks.json "
                              f"({str(e).splitlines()[0][:160]}): tasks.json does not belong to this graph") from e

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        limit = self.kv.max_sequence_length
        if limit and max_len > limit:
            raise ConfigError(f"{max_len} tokens (prompt plus new tokens) exceed the {limit} positions this "
                              f"graph covers; ask for a smaller `max_new_tokens` or a shorter input")
        try:
            return KVCache(self.kv, batch, max_len)
        except MemoryError:
            kv = self.kv
            gb = 8 * kv.num_layers * batch * kv.num_kv_heads * max_len * kv.head_dim / 1e9  # key + value, fp32
            raise ConfigError(f"a KV cache of {batch} rows x {max_len} positions ({gb:,.1f} GB) cannot be allocated: "
                              "ask for fewer new tokens (`max_new_tokens`) or fewer rows at once "
                              "(`batch_size`)") from None

    def step(self, input_ids: np.ndarray, lengths: np.ndarray, task_ids: np.ndarray | None,
             cache: KVCache, copy: bool = True) -> np.ndarray:
        """Run the graph once on ``input_ids`` (B, S) int64; returns logits (B, 1, V) at each row's
        last valid position: a copy of the cache's output buffer, or with ``copy=False`` that
        buffer itself, which the next step on this cache overwrites (a decode loop that picks
        its tokens before the next step reads it there, copying nothing)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        width = max(int(lengths.max()), input_ids.shape[1])
        if width > cache.max_len:
            raise ConfigError(f"sequence of {width} tokens exceeds the KV cache of {cache.max_len}")
        if self.takes_task_ids and task_ids is None:
            raise ConfigError(f"{self.path} is the multi-task graph: task_ids are required")
        io, logits = cache.binding(self.session, self.vocab_size or self._vocab())
        io.bind_cpu_input(INPUT_IDS, np.ascontiguousarray(input_ids, dtype=np.int64))
        io.bind_cpu_input(ATTENTION_MASK, cache.mask(lengths, width))
        if self.takes_task_ids:
            cache.bind_task_ids(task_ids)
        self.session.run_with_iobinding(io)
        return logits.copy() if copy else logits

    def prefill(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int], cache: KVCache,
                slots: Sequence[int], pad_id: int) -> np.ndarray:
        """Run ``prompts`` into rows ``slots`` of ``cache`` (positions ``[0, len)`` of each) and
        return each one's last-position logits ``(k, V)`` (a new array). A prompt that starts
        with its task's cached prefix (:attr:`prefixes`) takes that prefix's KV by copy and
        feeds only the rest, one row per step (onnxruntime's GroupQueryAttention runs a
        multi-token step with past context at batch 1 only); the other prompts run together as
        one right-padded step: in ``cache`` itself when they fill it in order, else in a cache
        of their own whose entries are copied into their slots."""
        k = len(prompts)
        slots = np.asarray(slots, dtype=np.int64)
        tids = np.asarray(task_ids, dtype=np.int64)
        out: list[np.ndarray | None] = [None] * k
        rest = []
        for i, (p, t) in enumerate(zip(prompts, tids.tolist(), strict=True)):
            n, kv = (0, None) if self.prefixes is None else self.prefixes.lookup(self, t, p)
            if not n:
                rest.append(i)
                continue
            row = cache.row(int(slots[i]))
            for dst, src in zip(row.arrays, kv, strict=True):
                dst[:, :, :n] = src[:, :, :n]
            out[i] = self.step(np.asarray([p[n:]], dtype=np.int64), np.asarray([len(p)], dtype=np.int64),
                               tids[i:i + 1], row, copy=False)[0, 0].copy()
        if rest:
            ids, lens = pad_rows([prompts[i] for i in rest], pad_id)
            dst = slots[rest]
            if len(rest) == cache.batch and np.array_equal(dst, np.arange(cache.batch)):
                logits = self.step(ids, lens, tids[rest], cache, copy=False)
            else:
                fresh = self.new_cache(len(rest), ids.shape[1])
                logits = self.step(ids, lens, tids[rest], fresh, copy=False)
                cache.write_rows(dst, fresh, np.arange(len(rest)), ids.shape[1])
            for j, i in enumerate(rest):
                out[i] = logits[j, 0].copy()
        return np.stack(out)

    def _vocab(self) -> int:
        """The vocabulary size of a graph whose logits shape leaves it symbolic (one probe step)."""
        cache = KVCache(self.kv, 1, 1)
        io = self.session.io_binding()
        io.bind_cpu_input(INPUT_IDS, np.zeros((1, 1), np.int64))
        io.bind_cpu_input(ATTENTION_MASK, np.ones((1, 1), np.int64))
        if self.takes_task_ids:
            io.bind_cpu_input(TASK_IDS, np.zeros(1, np.int64))
        io.bind_output(LOGITS, "cpu")
        for past, present, v in zip(self.kv.past_names, self.kv.present_names, cache.values, strict=True):
            io.bind_ortvalue_input(past, v)
            io.bind_ortvalue_output(present, v)
        self.session.run_with_iobinding(io)
        self.vocab_size = int(io.get_outputs()[0].shape()[-1])
        return self.vocab_size
