"""The per-task prefix cache: the KV of the tokens every prompt of a task starts with.

Every prompt of a task is its ``prompt_template`` around the input, so the tokens before the
``{input}`` marker are the same in every prompt of the task, and so is their KV: the adapted
blocks mix by task, never by row. A :class:`PrefixCache` belongs to one graph (one
:class:`~alter_edge.runtime.session.GraphRunner`); per task it holds token ids and, computed on
the first prompt that uses them, their KV on that graph. A new row copies the KV of the part of
its prompt that matches and feeds only the rest (``GraphRunner.prefill``).

Which part matches is decided per prompt: the longest common prefix of the prompt's ids and the
cached ids (at most the prompt's length minus one: the last token is always fed, its logits
are the row's first), used when it is at least ``min_tokens`` long (a row started from the
cache runs its own step, so a token or two saved would not pay for it). The KV of position ``i`` depends only on tokens ``0..i``, so any common
prefix of the cached ids is exact, and a prompt whose tokenization differs from the cached ids
(a BPE merge across the input boundary, a prompt cut in the middle) uses what matches, or none.

The cached ids of a task come from its template (:func:`template_prefix_ids`). When inputs
themselves start alike (the built-in tasks' templates are ``"{input}\\nAnswer:"``, their
instruction is part of the input), the cache learns: once two prompts of the task share at
least ``min_learned`` leading tokens, more than the template gives, those tokens become the
task's cached ids.
"""

from __future__ import annotations

import string
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# inputs the template is tokenized around: the constant prefix is what all of them share
_PROBES = ("a", "Z", "1", " x", "\n", "Hello world", "(", "é", "{", "the")
MIN_LEARNED = 4  # leading tokens two prompts must share before the cache learns them
MIN_TOKENS = 4  # a prompt starts from the cache when it shares at least this many tokens with it


def template_prefix_ids(tokenizer, template: str) -> list[int]:
    """The token ids every prompt of ``template`` starts with, whatever its input: the longest
    common prefix of the template's tokenizations around several different inputs (a token that
    merges with the input's first characters differs between them and is left out), cut to
    the tokens of the text before ``{input}``. Prompts are tokenized as ``alter_edge.prompts``
    does (no special tokens). Empty when the template starts with ``{input}``."""
    before = ""
    for literal, fld, _, _ in string.Formatter().parse(template):
        before += literal
        if fld is not None:
            break
    if not before:
        return []
    common = list(tokenizer.encode(before, add_special_tokens=False).ids)
    for probe in _PROBES:
        ids = tokenizer.encode(template.format(input=probe), add_special_tokens=False).ids
        common = common[:common_prefix(common, ids)]
    return common


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n]) != np.asarray(b[:n])
    return int(x.argmax()) if x.any() else n


@dataclass(eq=False)
class _Entry:
    ids: tuple[int, ...]
    kv: list[np.ndarray] | None = None  # per past input: [1, kv_heads, len(ids), head_dim]
    candidate: tuple[int, ...] | None = None  # the last prompt seen while learning
    learned: bool = False


@dataclass
class PrefixStats:
    rows: int = 0  # prompts looked up
    hits: int = 0  # prompts that started from cached KV
    tokens: int = 0  # prompt tokens taken from the cache (not fed)
    computed: int = 0  # prefixes whose KV was computed


@dataclass(eq=False)
class PrefixCache:
    """Task id -> the ids cached for it and their KV on one graph (see the module doc). Safe
    to share between threads. ``learn``: learn a longer prefix from the prompts themselves."""

    prefixes: Mapping[int, Sequence[int]]
    learn: bool = True
    min_learned: int = MIN_LEARNED
    min_tokens: int = MIN_TOKENS
    stats: PrefixStats = field(default_factory=PrefixStats)

    def __post_init__(self) -> None:
        self._entries = {int(t): _Entry(tuple(int(i) for i in ids)) for t, ids in self.prefixes.items()}
        self._lock = threading.Lock()

    def ids(self, task: int) -> tuple[int, ...]:
        """The ids cached for ``task`` now (empty: none)."""
        e = self._entries.get(int(task))
        return () if e is None else e.ids

    def lookup(self, runner, task: int, prompt: Sequence[int]) -> tuple[int, list[np.ndarray] | None]:
        """``(n, kv)``: the first ``n`` tokens of ``prompt`` have their KV in ``kv`` (per past
        input ``[1, kv_heads, >= n, head_dim]``, computed on ``runner`` the first time);
        ``(0, None)`` when nothing matches."""
        with self._lock:
            self.stats.rows += 1
            e = self._entries.get(int(task))
            if e is None:
                return 0, None
            if self.learn:
                self._observe(e, prompt)
            n = min(common_prefix(e.ids, prompt), len(prompt) - 1)
            if n < max(1, self.min_tokens):
                return 0, None
            if e.kv is None:
                e.kv = self._compute(runner, int(task), e.ids)
            self.stats.hits += 1
            self.stats.tokens += n
            return n, e.kv

    def pin(self, task: int, ids: Sequence[int]) -> None:
        """Cache exactly ``ids`` for ``task`` from now on (no more learning): a caller that knows
        every prompt it will run (the batch job) pins their common prefix, so which rows start
        from the cache, and from which KV, depends on its input alone, not on what ran before."""
        with self._lock:
            e = self._entries.get(int(task))
            if e is None:
                return
            ids = tuple(int(i) for i in ids)
            if ids != e.ids:
                e.ids, e.kv = ids, None
            e.learned, e.candidate = True, None

    def _observe(self, e: _Entry, prompt: Sequence[int]) -> None:
        if e.learned:
            return
        prompt = tuple(prompt)
        if e.candidate is not None:
            m = common_prefix(e.candidate, prompt)
            if m >= self.min_learned and m > len(e.ids):
                e.ids, e.kv, e.learned, e.candidate = e.candidate[:m], None, True, None
                return
        e.candidate = prompt

    def _compute(self, runner, task: int, ids: tuple[int, ...]) -> list[np.ndarray]:
        cache = runner.new_cache(1, len(ids))
        runner.step(np.asarray([ids], dtype=np.int64), np.asarray([len(ids)], dtype=np.int64),
                    np.asarray([task], dtype=np.int64), cache)
        self.stats.computed += 1
        return cache.arrays
