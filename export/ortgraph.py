"""A small onnxruntime driver for one exported graph (numpy only, no torch).

Used by validation: prompt-step logits, and greedy decoding with the KV cache that mirrors
``alter_edge.training.evaluate.greedy_generate`` step for step (left padding, positions from
the mask inside the graph, finished rows fed the pad id).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def left_pad_np(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 (B, T), padded on the left."""
    T = max(len(s) for s in seqs)
    ids = np.full((len(seqs), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=np.int64)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, T - len(s):] = np.asarray(s, dtype=np.int64)
            mask[i, T - len(s):] = 1
    return ids, mask


class OrtGraph:
    def __init__(self, path: str | Path, threads: int = 0, optimize: bool = True):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        if not optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.multitask = "task_ids" in self.input_names
        past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.past_names = [i.name for i in past]
        self.kv_heads, self.head_dim = int(past[0].shape[1]), int(past[0].shape[3])

    def empty_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32) for _ in self.past_names]

    def step(self, ids: np.ndarray, mask: np.ndarray, task_ids: np.ndarray | None,
             past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.multitask:
            if task_ids is None:
                raise ValueError(f"{self.path.name} is a multi-task graph: task_ids are required")
            feed["task_ids"] = np.asarray(task_ids, dtype=np.int64)
        feed.update(zip(self.past_names, past, strict=True))
        out = self.session.run(None, feed)
        return out[0], out[1:]

    def prompt_logits(self, ids: np.ndarray, mask: np.ndarray, task_ids: np.ndarray | None) -> np.ndarray:
        return self.step(ids, mask, task_ids, self.empty_past(ids.shape[0]))[0]

    def greedy(self, prompts: Sequence[Sequence[int]], task_ids: Sequence[int] | None, pad_id: int,
               max_new_tokens: int, eos_id: int = -1) -> list[list[int]]:
        """Greedy decoding with the cache; ``eos_id=-1`` never stops (fixed step count)."""
        ids, mask = left_pad_np(prompts, pad_id)
        tids = None if task_ids is None else np.asarray(list(task_ids), dtype=np.int64)
        B = ids.shape[0]
        out: list[list[int]] = [[] for _ in range(B)]
        done = np.zeros(B, dtype=bool)
        past = self.empty_past(B)
        cur = ids
        for _ in range(max_new_tokens):
            logits, past = self.step(cur, mask, tids, past)
            nxt = logits[:, -1].argmax(-1)  # (B,)
            for i in range(B):
                if not done[i]:
                    if int(nxt[i]) == eos_id:
                        done[i] = True
                    else:
                        out[i].append(int(nxt[i]))
            if done.all():
                break
            cur = np.where(done, pad_id, nxt).astype(np.int64)[:, None]
            mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
        return out
