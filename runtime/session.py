"""onnxruntime sessions and one forward step of a bundle graph.

A :class:`GraphRunner` owns one ``InferenceSession`` and knows the graph's I/O names from the
manifest's KV layout. ``InferenceSession.run`` may be called from several threads at once, and
the runner keeps no per-call state, so one runner serves concurrent requests. The KV cache
stays in onnxruntime ``OrtValue``s between steps: each step's presents are fed back as the
next step's past without a round trip through numpy.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from alter_edge.errors import BundleError, ConfigError

from .bundle import KVLayout

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
        raise ConfigError(f"providers must be provider names (strings), got {providers!r}; "
                          f"available: {', '.join(available)}")
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise ConfigError(
            f"execution provider(s) {', '.join(unknown)} not available in this onnxruntime; "
            f"available: {', '.join(available)}"
        )
    return list(providers)


def session_options(threads: int | None = None, optimization: str = "all",
                    spinning: bool = True) -> ort.SessionOptions:
    """``threads`` = intra-op threads (None: onnxruntime's default, one per core);
    ``spinning=False`` stops idle worker threads busy-waiting (kinder on a shared CPU)."""
    if optimization not in OPT_LEVELS:
        raise ConfigError(f"graph optimization {optimization!r} is not one of {', '.join(OPT_LEVELS)}")
    if threads is not None and (not isinstance(threads, numbers.Integral) or isinstance(threads, bool)
                                or threads < 1):
        raise ConfigError(f"threads must be an integer >= 1 (or None: one per core), got {threads!r}")
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


class GraphRunner:
    """One graph: ``step(input_ids, attention_mask, task_ids, past)`` -> (logits, presents)."""

    def __init__(self, path: Path, kv: KVLayout, options: ort.SessionOptions, providers: list[str]):
        self.path = Path(path)
        self.kv = kv
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{path}: onnxruntime cannot load this graph ({e})") from e
        names = {i.name for i in self.session.get_inputs()}
        self.takes_task_ids = "task_ids" in names
        expected = {"input_ids", "attention_mask", *kv.past_names}
        missing = sorted(expected - names)
        out_names = [o.name for o in self.session.get_outputs()]
        missing += sorted({"logits", *kv.present_names} - set(out_names))
        if missing:
            raise BundleError(f"{path}: graph lacks input/output(s) {', '.join(missing[:4])} "
                              "that manifest.json's kv_cache layout names")
        extra = sorted(names - expected - {"task_ids"})
        if extra:  # e.g. kv_cache.num_layers smaller than the graph's: inputs nobody would feed
            raise BundleError(f"{path}: graph takes input(s) {', '.join(extra[:4])} that manifest.json's "
                              f"kv_cache layout does not name (num_layers {kv.num_layers})")
        self.output_names = ["logits", *kv.present_names]
        vocab = self.session.get_outputs()[out_names.index("logits")].shape[-1]
        self.vocab_size = vocab if isinstance(vocab, int) else None
        log.info("loaded %s (task_ids input: %s)", path, self.takes_task_ids)

    def empty_past(self, batch: int) -> list[ort.OrtValue]:
        z = np.zeros((batch, self.kv.num_kv_heads, 0, self.kv.head_dim), dtype=np.float32)
        v = ort.OrtValue.ortvalue_from_numpy(z)
        return [v] * len(self.kv.past_names)

    @staticmethod
    def select_rows(past: list[ort.OrtValue], rows: np.ndarray) -> list[ort.OrtValue]:
        """The KV cache of the given batch rows only (a copy)."""
        return [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[rows])) for v in past]

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, task_ids: np.ndarray | None,
             past: list[ort.OrtValue]) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """Run the graph once. ``input_ids`` (B, T) int64 new tokens, ``attention_mask``
        (B, past+T) int64, ``task_ids`` (B,) int64 (ignored by a per-task graph)."""
        feeds = {
            "input_ids": ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
            "attention_mask": ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(attention_mask, dtype=np.int64)),
        }
        if self.takes_task_ids:
            if task_ids is None:
                raise ConfigError(f"{self.path} is the multi-task graph: task_ids are required")
            feeds["task_ids"] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(task_ids, dtype=np.int64))
        feeds.update(zip(self.kv.past_names, past, strict=True))
        outs = self.session.run_with_ort_values(self.output_names, feeds)
        return outs[0].numpy(), list(outs[1:])
