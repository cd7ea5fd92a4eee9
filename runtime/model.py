"""EdgeModel: the Python API of the torch-free runtime.

    from alter_edge.runtime import EdgeModel
    m = EdgeModel.load("bundle", threads=2)
    m.generate("repeat cat dog", task="echo").text
    m.classify(["is red a colour"], task="colour")[0].label
    for ev in m.stream("repeat cat dog", task="echo"):
        print(ev.text, end="", flush=True)

A request whose rows share one task runs on that task's specialized graph when the bundle has
one; otherwise (or for a mixed-task request) on the multi-task graph, fed ``task_ids``. One
EdgeModel may serve several threads at once: sessions are created once (under a lock) and
every call keeps its state on its own stack.
"""

from __future__ import annotations

import logging
import numbers
import threading
import time
from collections.abc import Iterator, Mapping, Sequence, Set
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from alter_edge.errors import BundleError, ConfigError, DataError, TaskError
from alter_edge.heap import trim_heap
from alter_edge.io import unicode_problem
from alter_edge.prompts import encode_prompt, label_token_ids
from alter_edge.tasks import TaskRegistry, TaskSpec

from .bundle import PRECISIONS, Bundle, GraphInfo, check_vocab, load_bundle
from .generate import RowText, SamplingParams, decode, shown_value
from .prefix import PrefixCache, common_prefix, template_prefix_ids
from .scoring import label_probabilities, score_labels
from .session import GraphRunner, check_providers, session_options

ENGINES = ("onnxruntime", "genai")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop" (a stop string) or "length" (max_new_tokens)
    task: str
    truncated: bool = False  # the prompt was cut in the middle to max_prompt_tokens


@dataclass(frozen=True)
class Classification:
    label: str
    probability: float  # softmax over the labels' log-likelihoods
    scores: dict[str, float]  # label -> log-likelihood of its tokens (with eos)
    task: str
    truncated: bool = False  # the prompt was cut in the middle to max_prompt_tokens


@dataclass(frozen=True)
class TokenEvent:
    """One streamed step of one row: ``text`` is the new text to show (may be empty);
    the row's last event has ``finish_reason`` set (and ``token_id`` None unless a stop
    string ended the row on that token)."""

    row: int
    token_id: int | None
    text: str
    finish_reason: str | None = None


def _load_tokenizer(root: Path) -> Tokenizer:
    try:
        tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    except Exception as e:  # tokenizers raises a plain Exception on a bad file
        raise BundleError(f"{root}/tokenizer.json cannot be loaded ({e})") from e
    trim_heap()
    return tok


class EdgeModel:
    def __init__(self, bundle: Bundle, tokenizer: Tokenizer, threads: int | None = None,
                 optimization: str = "all", providers: Sequence[str] | None = None,
                 precision: str | None = None, spinning: bool = True, ort_format: bool = False,
                 engine: str = "onnxruntime", prefix_cache: bool = True):
        if precision is not None and precision not in PRECISIONS:
            raise ConfigError(f"{shown_value(precision)} is not a precision; valid precisions: {', '.join(PRECISIONS)}")
        if engine not in ENGINES:
            raise ConfigError(f"engine {shown_value(engine)} is not one of {', '.join(ENGINES)}")
        if engine == "genai":
            from .genai_engine import import_genai

            import_genai()  # a clear error now when it is not installed
            if ort_format:
                raise ConfigError("engine='genai' reads the .onnx graphs, not their .ort twins (drop ort_format)")
            if providers and list(providers) != ["CPUExecutionProvider"]:
                raise ConfigError("engine='genai' runs on the CPU here; pass no providers (or use "
                                  "engine='onnxruntime')")
        self.engine = engine
        self.prefix_cache = bool(prefix_cache)
        self._threads = threads
        self._genai: dict = {}  # graph path -> GenaiRunner (engine='genai')
        self.bundle = bundle
        self.ort_format = ort_format
        self._tokenizer = tokenizer  # or a Future of it while load() runs
        self.precision = precision
        self._providers = check_providers(providers)
        self._options = session_options(threads, optimization, spinning)
        self._runners: dict[str, GraphRunner] = {}
        self._lock = threading.Lock()
        self._label_ids: dict[str, list[list[int]]] = {}
        self._pinned: dict[int, list[int]] = {}  # task id -> the prefix pinned for it (pin_prefixes)
        self.load_seconds = 0.0  # set by load()

    # -- loading ---------------------------------------------------------------------
    @classmethod
    def load(cls, bundle_dir: str | Path, threads: int | None = None, optimization: str = "all",
             providers: Sequence[str] | None = None, precision: str | None = None,
             verify: bool | str = True, preload: bool = False, spinning: bool = True,
             ort_format: bool = False, tasks: Sequence[str] | None = None,
             engine: str = "onnxruntime", prefix_cache: bool = True) -> EdgeModel:
        """Check and open a bundle. ``threads``: onnxruntime intra-op threads; ``optimization``:
        disable|basic|extended|all; ``providers``: onnxruntime execution providers (checked);
        ``precision``: fp32|int8|int4 (default: the bundle's best, int8 > int4 > fp32);
        ``verify``: check sha256s (graphs when first opened; "cached": not again for a file
        that matched before and is unchanged, ``runtime.verified``); ``preload``: open every graph now
        (default: the multi-task graph, which then serves every request); ``ort_format``: open each
        graph's ``.ort`` twin (bundles exported with --ort-format); ``tasks``: open only the
        graphs serving these tasks (each task's own graph where the bundle has one, which then
        serves that task's requests: an app doing one task holds one graph in memory);
        ``engine``: "onnxruntime" (the runtime's own decode loop) or "genai" (onnxruntime-genai's
        generator runs the same graphs, docs/runtime.md; classification still runs on an
        onnxruntime session of the graph, opened when first asked for); ``prefix_cache``: each
        graph keeps the KV of every task's constant prompt prefix and a new row feeds only the
        rest of its prompt (``runtime.prefix``, docs/runtime.md; False: every prompt runs whole)."""
        t0 = time.perf_counter()
        bundle = load_bundle(bundle_dir, verify=verify)
        with ThreadPoolExecutor(1) as pool:  # the tokenizer parses while onnxruntime builds sessions
            tok = pool.submit(_load_tokenizer, bundle.root)
            model = cls(bundle, tok, threads, optimization, providers, precision, spinning, ort_format, engine,
                        prefix_cache)
            if tasks is not None:  # only the graphs serving these tasks (one each)
                for name in tasks:
                    model._decoder(bundle.graph_for(bundle.tasks.get(name).name, precision))
            else:
                graphs = list(bundle.graphs) if preload else [model._default_graph()]
                for g in graphs:
                    if precision is None or g.precision == precision:
                        model._decoder(g)
            model.tokenizer = tok.result()
        model.load_seconds = time.perf_counter() - t0
        return model

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
        for g in self.bundle.graphs:
            with self._lock:
                self._runners.pop(g.path, None)
            self._runner(g)
            with self._lock:
                self._runners.pop(g.path, None)
            if g.ort is not None:
                self.bundle.check_graph(g, ort_format=True)

    def _default_graph(self) -> GraphInfo:
        if self.bundle.has_multi_task_graph:
            return self.bundle.graph_for(None, self.precision)
        return self.bundle.graph_for(self.bundle.graphs[0].task, self.precision)

    @property
    def tokenizer(self) -> Tokenizer:
        if isinstance(self._tokenizer, Future):  # still being parsed by load()
            self._tokenizer = self._tokenizer.result()
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    def _runner(self, graph: GraphInfo) -> GraphRunner:
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

    def _genai_runner(self, graph: GraphInfo):
        """The graph in onnxruntime-genai (engine='genai'), opened once after its hash checks."""
        from .genai_engine import GenaiRunner

        with self._lock:
            r = self._genai.get(graph.path)
            if r is None:
                self.bundle.check_graph(graph)
                r = GenaiRunner(self.bundle.root, graph.path, graph.task is None, self._threads,
                                self.bundle.kv.max_sequence_length)
                self._genai[graph.path] = r
            return r

    def _decoder(self, graph: GraphInfo):
        """What decodes on ``graph``: its GraphRunner, or its GenaiRunner with engine='genai'."""
        return self._genai_runner(graph) if self.engine == "genai" else self._runner(graph)

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
                is_open = own.path in self._runners or own.path in self._genai
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
        ids = [s.id for s in specs]
        eos, pad = self.bundle.eos_id, self.bundle.pad_id
        if self.engine == "genai":
            yield from self._genai_runner(graph).decode(prompts, ids, eos, pad, params, done, yield_eos,
                                                        batch_size)
        else:
            yield from decode(self._runner(graph), prompts, ids, eos, pad, params, done, yield_eos,
                              slots=batch_size)

    # -- prompts ---------------------------------------------------------------------
    def encode(self, text: str, task: str) -> tuple[list[int], int]:
        """(prompt ids as in training, untruncated length); no checks (see :meth:`prompt_ids`)."""
        return encode_prompt(self.tokenizer, self.tasks.get(task), text, self.bundle.max_prompt_tokens)

    def prompt_ids(self, text: str, task: str, truncate: bool = False) -> tuple[list[int], bool]:
        """(prompt ids, whether they were cut). An input that is empty, not valid Unicode or, with
        its prompt, over the bundle's ``max_prompt_tokens`` is a DataError; ``truncate=True``
        cuts an over-long one in the middle instead, as training did (and logs a warning). The
        API, the command line and the batch job all build prompts here."""
        problem = input_problem(text)
        if problem:
            raise DataError(f"input {problem}")
        ids, full = self.encode(text, task)
        limit = self.bundle.max_prompt_tokens
        if full <= limit:
            return ids, False
        if not truncate:
            raise DataError(f"input is {full} tokens with its prompt, over the bundle's max_prompt_tokens "
                            f"{limit} (truncate cuts it in the middle to {limit} tokens, as training did)")
        log.warning("input of %d tokens with its prompt cut in the middle to max_prompt_tokens %d",
                    full, limit)
        return ids, True

    def _prompts(self, texts: list[str], specs: Sequence[TaskSpec], truncate: bool) -> tuple[list[list[int]], list[bool]]:
        built = [self.prompt_ids(t, s.name, truncate) for t, s in zip(texts, specs, strict=True)]
        return [ids for ids, _ in built], [cut for _, cut in built]

    def _row_tasks(self, n: int, task: str | None, tasks: Sequence[str] | None) -> list[TaskSpec]:
        if (task is None) == (tasks is None):
            raise TaskError(f"pass task= (one for all rows) or tasks= (one per row); known tasks: "
                            f"{', '.join(self.tasks.names)}")
        names = [task] * n if tasks is None else list(tasks)
        if len(names) != n:
            raise TaskError(f"tasks= has {len(names)} names for {n} texts")
        return [self.tasks.get(t) for t in names]

    def _params(self, max_new_tokens: int | None, temperature: float, top_k: int, top_p: float,
                seed: int | None, stop: str | Sequence[str]) -> SamplingParams:
        budget = self.bundle.max_new_tokens if max_new_tokens is None else max_new_tokens
        return SamplingParams(budget, temperature, top_k, top_p, seed, stop)

    # -- generation ------------------------------------------------------------------
    def stream(self, texts: str | Sequence[str], task: str | None = None,
               tasks: Sequence[str] | None = None, max_new_tokens: int | None = None,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               seed: int | None = None, stop: str | Sequence[str] = (),
               truncate: bool = False, batch_size: int | None = None) -> Iterator[TokenEvent]:
        """Generate, yielding :class:`TokenEvent`s as tokens come (rows interleaved). Arguments
        are checked before the first event; see :meth:`generate`."""
        _, texts = as_texts(texts)
        specs = self._row_tasks(len(texts), task, tasks)
        params = self._params(max_new_tokens, temperature, top_k, top_p, seed, stop)
        check_batch_size(batch_size)
        prompts, _ = self._prompts(texts, specs, truncate)
        return self.stream_ids(prompts, specs, params, batch_size)

    def stream_ids(self, prompts: Sequence[Sequence[int]], specs: Sequence[TaskSpec],
                   params: SamplingParams, batch_size: int | None = None) -> Iterator[TokenEvent]:
        """:meth:`stream` on token ids (prompts already built). ``batch_size``: at most this many
        rows decode at once, a finished row's slot going to the next row (None: all at once).
        A row's last event (its finish) comes as soon as it ends."""
        if not prompts:
            return
        check_batch_size(batch_size)
        B = len(prompts)
        rows = [RowText(self.tokenizer, params.stop) for _ in range(B)]
        done = np.zeros(B, dtype=bool)
        for i, tok in self.decode_ids(prompts, specs, params, done, yield_eos=True, batch_size=batch_size):
            for ev in row_events(i, rows[i], tok, params.max_new_tokens):
                if ev.finish_reason == "stop":
                    done[i] = True
                yield ev

    def generate(self, texts: str | Sequence[str], task: str | None = None,
                 tasks: Sequence[str] | None = None, max_new_tokens: int | None = None,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None, stop: str | Sequence[str] = (),
                 truncate: bool = False, batch_size: int | None = None) -> Generation | list[Generation]:
        """Generate for one text (returns a :class:`Generation`) or a list (one batch; returns
        a list; ``[]`` gives ``[]``). ``task`` for all rows or ``tasks`` per row; temperature 0 =
        greedy; ``max_new_tokens`` None = the bundle's default; ``stop``: a string or a list of
        them; ``truncate``: cut an over-long input (else a DataError, see :meth:`prompt_ids`);
        ``batch_size``: at most this many rows decode at once, each finished row's slot going to
        the next row (None: all rows at once); the answers are the same either way."""
        single, texts = as_texts(texts)
        specs = self._row_tasks(len(texts), task, tasks)
        params = self._params(max_new_tokens, temperature, top_k, top_p, seed, stop)
        check_batch_size(batch_size)
        prompts, cut = self._prompts(texts, specs, truncate)
        out = collect(self.stream_ids(prompts, specs, params, batch_size), len(texts),
                      [s.name for s in specs], cut)
        return out[0] if single else out

    # -- classification --------------------------------------------------------------
    def label_ids(self, task: str) -> list[list[int]]:
        spec = self.tasks.get(task)
        if spec.kind != "classify" or not spec.labels:
            classify = [t.name for t in self.tasks if t.kind == "classify"]
            raise TaskError(f"task {task!r} has no label set (kind {spec.kind!r}); classify tasks: "
                            f"{', '.join(classify) or 'none'}")
        ids = self._label_ids.get(task)
        if ids is None:
            ids = self._label_ids[task] = label_token_ids(self.tokenizer, spec.labels, self.bundle.eos_id)
        return ids

    def classify(self, texts: str | Sequence[str], task: str,
                 truncate: bool = False) -> Classification | list[Classification]:
        """Score every label of ``task`` after each text's prompt; the best label wins (``[]``
        gives ``[]``; ``truncate`` as in :meth:`generate`)."""
        single, texts = as_texts(texts)
        spec = self.tasks.get(task)
        prompts, cut = self._prompts(texts, [spec] * len(texts), truncate)
        out = self.classify_ids(prompts, task)
        out = [Classification(c.label, c.probability, c.scores, c.task, t) for c, t in zip(out, cut, strict=True)]
        return out[0] if single else out

    def classify_ids(self, prompts: Sequence[Sequence[int]], task: str) -> list[Classification]:
        spec = self.tasks.get(task)
        label_ids = self.label_ids(task)
        if not prompts:
            return []
        runner = self.runner_for([task])
        scores = score_labels(runner, prompts, [spec.id] * len(prompts), label_ids, self.bundle.pad_id)
        probs = label_probabilities(scores)
        out = []
        for s, p in zip(scores, probs, strict=True):
            j = int(np.argmax(s))
            out.append(Classification(spec.labels[j], float(p[j]),
                                      {lab: float(v) for lab, v in zip(spec.labels, s, strict=True)}, task))
        return out


def row_events(row: int, text: RowText, token_id: int | None, max_new_tokens: int) -> list[TokenEvent]:
    """The events of one decoded token of a row (``None``: its eos): its text piece, and its
    finish when a stop string, the eos or ``max_new_tokens`` ends it (``stream_ids`` and the
    server both build their events here)."""
    if token_id is None:
        return [TokenEvent(row, None, text.finish(), "eos")]
    piece = text.push(token_id)
    if text.stopped:
        return [TokenEvent(row, token_id, piece, "stop")]
    if len(text.ids) == max_new_tokens:  # decode gives the row no more tokens
        return [TokenEvent(row, token_id, piece), TokenEvent(row, None, text.finish(), "length")]
    return [TokenEvent(row, token_id, piece)]


def verify_bundle(bundle_dir: str | Path) -> dict:
    """Every check the runtime makes when it loads the bundle and serves a request, and the
    manifest it checked; a BundleError names the first problem. The load checks (format,
    version, the manifest's schema and path confinement, tasks, every listed file's sha256, no
    unlisted file), then the tokenizer and, one graph at a time: sha256, onnxruntime session, KV
    layout, vocabulary, every task id; each ``.ort`` twin's sha256. ``alter-edge inspect`` runs
    it; so should an app before it hands a bundle to another runtime (onnxruntime-genai reads
    genai_config.json and the graphs and checks no hash, docs/bundle-format.md)."""
    model = EdgeModel.load(Path(bundle_dir), threads=1, optimization="disable", verify=True, tasks=())
    model.verify_graphs()
    return model.bundle.manifest


def as_texts(texts: object) -> tuple[bool, list[str]]:
    """(one text?, the texts as a list): a str is one text; bytes or a non-string item is a
    ConfigError (bytes are not split into numbers)."""
    if isinstance(texts, str):
        return True, [texts]
    if isinstance(texts, (bytes, bytearray, memoryview)):
        raise ConfigError(f"texts must be a str or a list of str, got {type(texts).__name__} "
                          "(decode it first, e.g. .decode('utf-8'))")
    if isinstance(texts, (Mapping, Set)):  # a dict would run its keys; a set has no order
        raise ConfigError(f"texts must be a str or a list of str, got {type(texts).__name__} "
                          "(pass list(...) of the texts, in the order the results should come)")
    try:
        out = list(texts)
    except TypeError:
        raise ConfigError(f"texts must be a str or a list of str, got {type(texts).__name__}") from None
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ConfigError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return False, out


def input_problem(text: object) -> str | None:
    """Why ``text`` cannot be a model input (not a string, empty, a lone surrogate), or None."""
    if not isinstance(text, str):
        return f"must be a string, got {type(text).__name__}"
    if not text.strip():
        return "is empty"
    return unicode_problem(text, hint=False)


def check_batch_size(batch_size: object) -> None:
    if batch_size is not None and (not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool)
                                   or batch_size < 1):
        raise ConfigError(f"batch_size must be an integer >= 1 or None (all rows at once), got {shown_value(batch_size)}")


def finished_rows(events: Iterator[TokenEvent], n: int, task_names: Sequence[str],
                  truncated: Sequence[bool] | None = None) -> Iterator[tuple[int, Generation]]:
    """``(row, its Generation)`` as each row of a stream finishes."""
    ids: list[list[int]] = [[] for _ in range(n)]
    text = [""] * n
    cut = truncated or [False] * n
    for ev in events:
        if ev.token_id is not None:
            ids[ev.row].append(ev.token_id)
        text[ev.row] += ev.text
        if ev.finish_reason:
            yield ev.row, Generation(text[ev.row], ids[ev.row], ev.finish_reason, task_names[ev.row], cut[ev.row])


def collect(events: Iterator[TokenEvent], n: int, task_names: Sequence[str],
            truncated: Sequence[bool] | None = None) -> list[Generation]:
    """Gather a stream into one :class:`Generation` per row."""
    out: list[Generation | None] = [None] * n
    for i, g in finished_rows(events, n, task_names, truncated):
        out[i] = g
    missing = [i for i, g in enumerate(out) if g is None]
    if missing:
        raise RuntimeError(f"the stream ended without finishing rows {missing[:5]}")
    return out
