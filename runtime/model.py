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
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from alter_edge.errors import BundleError, DataError, TaskError
from alter_edge.heap import trim_heap
from alter_edge.prompts import encode_prompt, label_token_ids
from alter_edge.tasks import TaskSpec

from .bundle import load_bundle
from .generate import RowText, SamplingParams
from .graphs import ENGINES, GraphSet
from .results import (
    Classification,
    Generation,
    TokenEvent,
    as_texts,
    check_batch_size,
    collect,
    finished_rows,
    input_problem,
    row_events,
)
from .scoring import label_probabilities

# the API's result types and argument checks live in runtime.results; they are named here too
__all__ = ["ENGINES", "Classification", "EdgeModel", "Generation", "TokenEvent", "as_texts", "check_batch_size",
           "collect", "finished_rows", "input_problem", "row_events", "verify_bundle"]


log = logging.getLogger(__name__)


def _load_tokenizer(root: Path) -> Tokenizer:
    try:
        tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    except Exception as e:  # tokenizers raises a plain Exception on a bad file
        raise BundleError(f"{root}/tokenizer.json cannot be loaded ({e})") from e
    trim_heap()
    return tok


class EdgeModel(GraphSet):
    """A bundle loaded for requests: prompts, generation and classification (the module's
    docstring); its graphs, engines and routing are :class:`~runtime.graphs.GraphSet`'s."""

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
        graph's ``.ort`` twin (a bundle whose manifest lists one per graph); ``tasks``: open only the
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
                graphs = list(bundle.decoding_graphs) if preload else [model._default_graph()]
                for g in graphs:
                    if precision is None or g.precision == precision:
                        model._decoder(g)
            model.tokenizer = tok.result()
        model.load_seconds = time.perf_counter() - t0
        return model

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

    def _request(self, texts, task, tasks, max_new_tokens, temperature, top_k, top_p, seed, stop, truncate,
                 batch_size) -> tuple[bool, list[TaskSpec], SamplingParams, list[list[int]], list[bool]]:
        """A generate/stream request's arguments checked, in order, and its prompts built:
        (one text?, row tasks, sampling, prompts, which prompts were cut)."""
        single, texts = as_texts(texts)
        specs = self._row_tasks(len(texts), task, tasks)
        params = self._params(max_new_tokens, temperature, top_k, top_p, seed, stop)
        check_batch_size(batch_size)
        prompts, cut = self._prompts(texts, specs, truncate)
        return single, specs, params, prompts, cut

    # -- generation ------------------------------------------------------------------
    def stream(self, texts: str | Sequence[str], task: str | None = None,
               tasks: Sequence[str] | None = None, max_new_tokens: int | None = None,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               seed: int | None = None, stop: str | Sequence[str] = (),
               truncate: bool = False, batch_size: int | None = None) -> Iterator[TokenEvent]:
        """Generate, yielding :class:`TokenEvent`s as tokens come (rows interleaved). Arguments
        are checked before the first event; see :meth:`generate`."""
        _, specs, params, prompts, _ = self._request(texts, task, tasks, max_new_tokens, temperature, top_k, top_p,
                                                     seed, stop, truncate, batch_size)
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
        single, specs, params, prompts, cut = self._request(texts, task, tasks, max_new_tokens, temperature, top_k,
                                                            top_p, seed, stop, truncate, batch_size)
        out = collect(self.stream_ids(prompts, specs, params, batch_size), len(prompts),
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
        engine = self.engine_for([task])
        scores = engine.score_labels(prompts, [spec.id] * len(prompts), label_ids, self.bundle.pad_id)
        probs = label_probabilities(scores)
        out = []
        for s, p in zip(scores, probs, strict=True):
            j = int(np.argmax(s))
            out.append(Classification(spec.labels[j], float(p[j]),
                                      {lab: float(v) for lab, v in zip(spec.labels, s, strict=True)}, task))
        return out


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
    return model.bundle.manifest.to_json()
