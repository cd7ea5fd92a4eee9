"""The graphs behind ``EdgeModel``: sessions opened once, the engine that decodes on each, and
which graph serves a request.

:class:`GraphSet` opens a graph when a request first needs it (hash checks, onnxruntime
session, KV layout, vocabulary, task ids; the weight files hash while the session builds),
keeps one :class:`~runtime.decoder.Decoder` per graph (the own loop, or onnxruntime-genai with
``engine="genai"``), the per-task prompt-prefix cache, and routes a request to the graph
serving its tasks. ``EdgeModel`` adds prompts, generation and classification on top.

What opens a graph's decoder depends on the bundle's architecture and the engine asked for, one
table (``_OPEN``): a decoder LM's graph runs on the own loop (``runtime.generate``) or
onnxruntime-genai; an encoder-decoder (T5) bundle's decoder graph with its encoder graph runs
on ``runtime.seq2seq_engine`` (a request is routed by its decoder graph; the encoder graph of
the same task and precision goes with it). A combination the table lacks is refused when the
model is made.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from tokenizers import Tokenizer

from alter_edge.errors import ConfigError
from alter_edge.tasks import TaskRegistry, TaskSpec

from .bundle import PRECISIONS, Bundle, GraphInfo, check_vocab
from .decoder import Decoder, Engine, OwnDecoder
from .generate import SamplingParams, shown_value
from .prefix import PrefixCache, common_prefix, template_prefix_ids
from .session import GraphRunner, check_providers, session_options

ENGINES = ("onnxruntime", "genai")
DECODER_LM, ENCODER_DECODER = "decoder", "encoder-decoder"  # manifest "architecture" values


class GraphSet:
    """A bundle's graphs as one model serves them (see the module's docstring); every method
    may run on several threads at once."""

    def __init__(self, bundle: Bundle, tokenizer: Tokenizer, threads: int | None = None,
                 optimization: str = "all", providers: Sequence[str] | None = None,
                 precision: str | None = None, spinning: bool = True, ort_format: bool = False,
                 engine: str = "onnxruntime", prefix_cache: bool = True):
        if precision is not None and precision not in PRECISIONS:
            raise ConfigError(f"{shown_value(precision)} is not a precision; valid precisions: {', '.join(PRECISIONS)}")
        if engine not in ENGINES:
            raise ConfigError(f"engine {shown_value(engine)} is not one of {', '.join(ENGINES)}")
        if (bundle.architecture, engine) not in self._OPEN:
            runs = [e for a, e in self._OPEN if a == bundle.architecture]
            raise ConfigError(f"engine {engine!r} does not run {bundle.architecture} bundles ({bundle.root}); "
                              f"engines for them: {', '.join(runs)} (docs/runtime.md)")
        if engine == "genai":
            from .genai_engine import check_genai_options

            check_genai_options(ort_format, providers)
        self.engine = engine
        # an encoder-decoder has no prompt prefix of its own to cache (its encoder is bidirectional)
        self.prefix_cache = bool(prefix_cache) and bundle.architecture == DECODER_LM
        self._threads = threads
        self._decoders: dict[str, Decoder] = {}  # graph path -> what decodes on it (``engine``)
        self.bundle = bundle
        self.ort_format = ort_format
        self._tokenizer = tokenizer  # or a Future of it while load() runs
        self.precision = precision
        self._providers = check_providers(providers)
        self._options = session_options(threads, optimization, spinning)
        self._runners: dict[str, GraphRunner] = {}
        self._lock = threading.Lock()
        self._open_lock = threading.Lock()  # held while a decoder opens (its runner takes _lock)
        self._label_ids: dict[str, list[list[int]]] = {}
        self._pinned: dict[int, list[int]] = {}  # task id -> the prefix pinned for it (pin_prefixes)
        self.load_seconds = 0.0  # set by load()

    @property
    def tasks(self) -> TaskRegistry:
        return self.bundle.tasks

    @property
    def default_precision(self) -> str:
        """The precision a request gets: the one asked for, else the default graph's."""
        return self.precision or self._default_graph().precision

    def verify_graphs(self) -> None:
        """Open every graph of the bundle once, one at a time (hash, onnxruntime session, KV
        layout, vocabulary: what a request would do), and hash every ``.ort`` twin."""
        for g in self.bundle.decoding_graphs:  # an encoder graph opens with its decoder graph
            with self._lock:
                self._runners.pop(g.path, None)
                self._decoders.pop(g.path, None)
            self._own(g)
            with self._lock:
                self._runners.pop(g.path, None)
                self._decoders.pop(g.path, None)
        for g in self.bundle.graphs:
            if g.ort is not None:
                self.bundle.check_graph(g, ort_format=True)

    def _default_graph(self) -> GraphInfo:
        if self.bundle.has_multi_task_graph:
            return self.bundle.graph_for(None, self.precision)
        return self.bundle.graph_for(self.bundle.decoding_graphs[0].task, self.precision)

    @property
    def tokenizer(self) -> Tokenizer:
        if isinstance(self._tokenizer, Future):  # still being parsed by load()
            self._tokenizer = self._tokenizer.result()
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    def _runner(self, graph: GraphInfo) -> GraphRunner:
        if self.bundle.architecture != DECODER_LM:
            raise ConfigError(f"{graph.path} is an {self.bundle.architecture} graph: it has no single-graph "
                              "GraphRunner (use engine_for, the pair's engine)")
        with self._lock:
            r = self._runners.get(graph.path)
            if r is None:
                path = self.bundle.check_graph(graph, self.ort_format, weights=False)
                # the weight files hash in a thread while onnxruntime builds the session (both
                # release the GIL); a mismatch discards the session and raises
                with ThreadPoolExecutor(1) as pool:
                    hashed = pool.submit(self.bundle.check_weights, graph)
                    try:
                        r = GraphRunner(path, self.bundle.kv, self._options, self._providers)
                    finally:
                        hashed.result()
                check_vocab(self.bundle, self.tokenizer.get_vocab_size(with_added_tokens=True),
                            r.vocab_size, graph.path)
                r.check_task_ids(len(self.tasks))
                if self.prefix_cache:
                    r.prefixes = self._prefix_cache(graph)
                self._runners[graph.path] = r
            return r

    def _prefix_cache(self, graph: GraphInfo) -> PrefixCache:
        """The prefix cache of ``graph``: the tasks it serves (every task on the multi-task
        graph), each with its template's constant prefix (or the prefix pinned for it); the KV
        is computed on first use."""
        specs = list(self.tasks) if graph.task is None else [self.tasks.get(graph.task)]
        cache = PrefixCache({s.id: template_prefix_ids(self.tokenizer, s.prompt_template) for s in specs})
        for task, ids in self._pinned.items():
            cache.pin(task, ids)
        return cache

    def pin_prefixes(self, prompts: Sequence[Sequence[int]], tasks: Sequence[str]) -> None:
        """Cache, for each task, exactly the longest prefix all of its ``prompts`` share, on every
        graph (open now or later): the batch job pins its whole input's, so a row's result does
        not depend on what the model ran before (a resumed job writes the same bytes). Nothing
        with the prefix cache off."""
        by_task: dict[int, list[int]] = {}
        for p, name in zip(prompts, tasks, strict=True):
            tid = self.tasks.id_of(name)
            common = by_task.get(tid)
            by_task[tid] = list(p) if common is None else common[:common_prefix(common, p)]
        if not self.prefix_cache:
            return
        with self._lock:
            self._pinned.update(by_task)
            runners = list(self._runners.values())
        for r in runners:
            if r.prefixes is not None:
                for tid, ids in by_task.items():
                    r.prefixes.pin(tid, ids)

    def _decoder(self, graph: GraphInfo) -> Decoder:
        """What decodes on ``graph`` (opened once): the own loop on its GraphRunner, or with
        engine='genai' onnxruntime-genai's generator, after the graph's hash checks."""
        with self._open_lock:  # one decoder per graph, however many threads ask at once
            d = self._decoders.get(graph.path)
            if d is None:
                d = self._OPEN[self.bundle.architecture, self.engine](self, graph)
                with self._lock:
                    self._decoders[graph.path] = d
            return d

    def _own_decoder(self, graph: GraphInfo) -> Decoder:
        return OwnDecoder(self._runner(graph))

    def _genai_decoder(self, graph: GraphInfo) -> Decoder:
        from .genai_engine import GenaiRunner

        self.bundle.check_graph(graph)
        return GenaiRunner(self.bundle.root, graph.path, graph.task is None, self._threads,
                           self.bundle.kv.max_sequence_length)

    def _seq2seq_decoder(self, graph: GraphInfo) -> Engine:
        from .seq2seq_engine import open_seq2seq

        return open_seq2seq(self.bundle, graph, self.tokenizer, self._options, self._providers, self.ort_format)

    # (architecture, engine) -> how a graph's decoder opens
    _OPEN = {(DECODER_LM, "onnxruntime"): _own_decoder, (DECODER_LM, "genai"): _genai_decoder,
             (ENCODER_DECODER, "onnxruntime"): _seq2seq_decoder}

    def _own(self, graph: GraphInfo) -> Engine:
        """The runtime's own engine on ``graph`` (label scoring, the server's pool), whatever
        engine decodes: a decoder LM's GraphRunner, or the encoder-decoder engine."""
        if self.bundle.architecture == DECODER_LM:
            return OwnDecoder(self._runner(graph))
        return self._decoder(graph)

    def engine_for(self, task_names: Sequence[str]) -> Engine | None:
        """The runtime's own engine on the graph serving a request of these tasks (see
        :meth:`graph_for_request`), or None when rows must be split by task."""
        graph = self.graph_for_request(task_names)
        return None if graph is None else self._own(graph)

    def graph_for_request(self, task_names: Sequence[str]) -> GraphInfo | None:
        """The graph serving a request of these tasks, or None when rows must be split by
        task (mixed tasks and no multi-task graph). A one-task request runs on its task's own
        graph when that graph is open (``load(tasks=...)`` or ``preload``) or the bundle has no
        multi-task graph; otherwise on the multi-task graph, so no second graph is loaded
        unless asked for."""
        names = set(task_names)
        if len(names) == 1:
            own = self.bundle.graph_for(names.pop(), self.precision)
            with self._lock:
                is_open = own.path in self._runners or own.path in self._decoders
            if own.task is None or is_open or not self.bundle.has_multi_task_graph:
                return own
        if not self.bundle.has_multi_task_graph:
            return None
        return self.bundle.graph_for(None, self.precision)

    def runner_for(self, task_names: Sequence[str]) -> GraphRunner | None:
        """The onnxruntime graph runner serving a request of these tasks (see
        :meth:`graph_for_request`), or None when rows must be split by task."""
        graph = self.graph_for_request(task_names)
        return None if graph is None else self._runner(graph)

    def decode_ids(self, prompts: Sequence[Sequence[int]], specs: Sequence[TaskSpec],
                   params: SamplingParams, done: np.ndarray | None = None, yield_eos: bool = False,
                   batch_size: int | None = None) -> Iterator[tuple[int, int | None]]:
        """``(row, token id)`` as the engine generates them (:func:`runtime.generate.decode`'s
        contract) on the graph serving one request of these rows' tasks; mixed tasks on a
        bundle without a multi-task graph run one task's rows after the other's."""
        graph = self.graph_for_request([s.name for s in specs])
        if graph is None:  # mixed tasks, per-task graphs only: one group per task
            done = np.zeros(len(prompts), dtype=bool) if done is None else done
            for name in dict.fromkeys(s.name for s in specs):
                rows = [i for i, s in enumerate(specs) if s.name == name]
                sub = done[rows]  # the group's own flags, kept in step with the caller's
                for i, tok in self.decode_ids([prompts[i] for i in rows], [specs[i] for i in rows], params,
                                              sub, yield_eos, batch_size):
                    done[rows] |= sub
                    yield rows[i], tok
                    sub |= done[rows]
            return
        yield from self._decoder(graph).decode(prompts, [s.id for s in specs], self.bundle.eos_id,
                                               self.bundle.pad_id, params, done, yield_eos, batch_size)

