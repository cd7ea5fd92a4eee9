"""onnxruntime-genai as a decode engine: a bundle graph run by its C++ generator loop.

``EdgeModel.load(bundle, engine="genai")`` opens each graph it serves with
``onnxruntime_genai.Model`` through the bundle's own ``genai_config.json`` (an overlay names the
graph and the thread count; the bundle is left as it is) and decodes with its ``Generator``:
``task_ids`` (one per row) is fed to a multi-task graph with ``Generator.set_model_input``.
Prompts are built and text is detokenized by the runtime, as with its own engine; greedy
tokens are the runtime's own (tests/test_genai_engine.py). The generator steps all of a
batch's rows together until the last one ends, so ``batch_size`` splits a request into batches
that run one after the other (no refill of a finished row's slot).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from alter_edge.errors import BundleError, ConfigError
from alter_edge.padding import pad_rows

from .contract import TASK_IDS
from .generate import SamplingParams, decode_args

GENAI_CONFIG = "genai_config.json"


def import_genai():
    """The onnxruntime_genai module, or a ConfigError saying how to install it."""
    try:
        import onnxruntime_genai
    except ImportError as e:
        raise ConfigError("engine='genai' needs onnxruntime-genai, which is not installed here "
                          f"({e}); install the extra: pip install 'alter-edge[genai]' (Python >= 3.11), "
                          "or use engine='onnxruntime' (the default)") from None
    return onnxruntime_genai


def check_genai_options(ort_format: bool, providers) -> None:
    """What engine='genai' cannot honour, as a ConfigError now (also: not installed)."""
    import_genai()
    if ort_format:
        raise ConfigError("engine='genai' reads the .onnx graphs, not their .ort twins (drop ort_format)")
    if providers and list(providers) != ["CPUExecutionProvider"]:
        raise ConfigError("engine='genai' runs on the CPU here; pass no providers (or use "
                          "engine='onnxruntime')")


class GenaiRunner:
    """One graph of a model folder (a bundle, or any folder with a ``genai_config.json``) in
    onnxruntime-genai (a ``runtime.decoder.Decoder``). ``graph``: the graph's file name in that
    folder; ``takes_task_ids``: feed each row's task id (the multi-task graph)."""

    def __init__(self, folder: Path, graph: str, takes_task_ids: bool, threads: int | None = None,
                 max_sequence_length: int = 0):
        og = import_genai()
        self.og, self.path, self.takes_task_ids = og, Path(folder) / graph, takes_task_ids
        self.max_sequence_length = max_sequence_length
        self._vocab: int | None = None
        if not (Path(folder) / GENAI_CONFIG).is_file():
            raise BundleError(f"{folder} has no {GENAI_CONFIG}, which onnxruntime-genai needs "
                              "(bundles exported by alter-edge ship one; re-export this bundle)")
        decoder: dict = {"filename": graph}
        if threads is not None:
            decoder["session_options"] = {"intra_op_num_threads": int(threads)}
        try:
            cfg = og.Config(str(folder))
            cfg.overlay(json.dumps({"model": {"decoder": decoder}}))
            self.model = og.Model(cfg)
        except Exception as e:  # onnxruntime-genai raises plain RuntimeErrors
            raise BundleError(f"{self.path}: onnxruntime-genai cannot run this graph "
                              f"({str(e).splitlines()[0][:200]}); use engine='onnxruntime'") from e

    def decode(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int], eos_id: int, pad_id: int,
               params: SamplingParams | Sequence[SamplingParams], done: np.ndarray | None = None,
               yield_eos: bool = False, slots: int | None = None) -> Iterator[tuple[int, int | None]]:
        """:func:`runtime.generate.decode`'s contract: ``(row, token)`` per generated token, a row
        ending at its eos (``(row, None)`` with ``yield_eos``) or its ``max_new_tokens``, or when
        the caller sets ``done[row]``. One SamplingParams for every row; sampling draws from
        onnxruntime-genai's own sampler (its tokens are not the runtime's for the same seed);
        ``ignore_eos`` keeps eos from being chosen (onnxruntime-genai's ``min_length``)."""
        n = len(prompts)
        if n == 0:
            return
        row_params, tids = decode_args(prompts, task_ids, params, slots)  # the checks both engines share
        kinds = set(row_params)
        if len(kinds) != 1:
            raise ConfigError("engine='genai' runs one SamplingParams for all rows of a request; "
                              f"got {len(kinds)} different ones (use engine='onnxruntime')")
        params = kinds.pop()
        ends_in_pad = [i for i, p in enumerate(prompts) if p[-1] == pad_id]
        if ends_in_pad:
            raise ConfigError(f"prompt(s) {ends_in_pad[:5]} end in the pad id {pad_id}: onnxruntime-genai finds a "
                              "row's length by its trailing pad ids (use engine='onnxruntime')")
        done = np.zeros(n, dtype=bool) if done is None else done
        size = n if slots is None else slots
        for lo in range(0, n, size):
            yield from self._batch(prompts, tids, range(lo, min(lo + size, n)), eos_id, pad_id, params, done,
                                   yield_eos)

    def _batch(self, prompts, tids: np.ndarray, rows: range, eos_id: int, pad_id: int, params: SamplingParams,
               done: np.ndarray, yield_eos: bool) -> Iterator[tuple[int, int | None]]:
        og = self.og
        ids, _ = pad_rows([prompts[i] for i in rows], pad_id)
        budget = params.max_new_tokens
        total = ids.shape[1] + budget
        if self.max_sequence_length and total > self.max_sequence_length:
            raise ConfigError(f"{total} tokens (prompt plus new tokens) exceed the {self.max_sequence_length} "
                              "positions this graph covers; ask for a smaller `max_new_tokens` or a shorter input")
        search: dict = {"max_length": total, "batch_size": len(rows), "do_sample": not params.greedy}
        if params.ignore_eos:
            search["min_length"] = total
        if not params.greedy:
            vocab = self.model_vocab()  # a k over the vocabulary keeps every token, as in the own loop
            search.update(temperature=float(params.temperature), top_p=float(params.top_p),
                          top_k=min(int(params.top_k), vocab) or vocab)
            if params.seed is not None:
                search["random_seed"] = generator_seed(params.seed)
        gp = og.GeneratorParams(self.model)
        gp.set_search_options(**search)
        gen = og.Generator(self.model, gp)
        # onnxruntime-genai reads this array at every step without holding a reference to it
        task_rows = np.ascontiguousarray(tids[list(rows)])
        if self.takes_task_ids:
            gen.set_model_input(TASK_IDS, task_rows)
        gen.append_tokens(ids.astype(np.int32))
        count = np.zeros(len(rows), dtype=np.int64)
        ended = np.zeros(len(rows), dtype=bool)
        while not gen.is_done():
            gen.generate_next_token()
            for j, t in enumerate(gen.get_next_tokens().tolist()):
                i = rows[j]
                if ended[j] or done[i]:
                    ended[j] = True
                    continue
                if t == eos_id and not params.ignore_eos:
                    done[i] = ended[j] = True
                    if yield_eos:
                        yield i, None
                    continue
                count[j] += 1
                yield i, int(t)
                ended[j] = count[j] == budget
            if ended.all():
                break
        del gen, task_rows

    def model_vocab(self) -> int:
        if self._vocab is None:
            cfg = json.loads((self.path.parent / GENAI_CONFIG).read_text())
            self._vocab = int(cfg["model"]["vocab_size"])
        return self._vocab


GENERATOR_SEEDS = 2**31  # onnxruntime-genai's random_seed is a C int


def generator_seed(seed: int) -> int:
    """A SamplingParams seed (0..2**63-1) as onnxruntime-genai's 31-bit ``random_seed``: seeds
    below 2**31 as they are, larger ones folded by a hash (the same seed, the same draw)."""
    if seed < GENERATOR_SEEDS:
        return seed
    digest = hashlib.sha256(seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest[:8], "little") % GENERATOR_SEEDS
