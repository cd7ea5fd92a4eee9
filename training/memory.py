"""Keeping the training process's resident memory flat.

Measured on SmolLM2-135M (``docs/benchmarks.md``): with the default glibc allocator a
cached training run grew from 0.5 GB to 3.4 GB over 150 steps and past 4.9 GB over 640,
although one step needs about 1.3 GB. Two things cause it: every batch has a different
length, so activations, bf16 weight casts and target logits are freed as chunks of ever new
sizes that glibc cannot reuse, and freed pages inside its arenas stay resident. Two fixes
(``benchmarks/memory_bench.py``: peak 3.0 -> 1.8 GB over 100 steps; the trim makes a cached
step ~1.5x slower, the padding ~1.08x):

- batches are padded to a multiple of :data:`PAD_MULTIPLE` tokens (few distinct shapes);
- :func:`trim_heap` hands free arena pages back to the OS (``malloc_trim``) after each step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

PAD_MULTIPLE = 32
# LazyTrim's default: RSS creep above a step's level that triggers malloc_trim (benchmarks only so
# far: the trainer still trims after every step)
TRIM_SLACK_MB = 256


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def trim_heap() -> bool:
    """Return free heap pages to the OS; False where the C library has no malloc_trim."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc/self/statm``); 0 where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class LazyTrim:
    """``trim_heap`` only once RSS has crept ``slack_mb`` above its level after the first step
    that followed the last trim.

    Trimming after every step bounds RSS tightly but costs time: the trim walks the heap and
    the pages it hands back are faulted in again by the next step. A step keeps its freed
    activations resident, so the level right after a trim is not the one to compare with;
    the level one step later is, and from there RSS creeps (new batch lengths leave chunks
    glibc cannot reuse) until the next trim. ``slack_mb`` = 0 trims on every call, as
    ``trim_heap`` does; where RSS cannot be read it trims on every call too."""

    def __init__(self, slack_mb: float = 0.0):
        self.slack = int(slack_mb * 2**20)
        self.level: int | None = None
        self.trims = 0

    def __call__(self) -> bool:
        rss = rss_bytes()
        if self.slack and rss:
            if self.level is None:  # the first call after a trim sets the level
                self.level = rss
                return False
            if rss < self.level + self.slack:
                return False
        trimmed = trim_heap()
        self.trims += trimmed
        self.level = None
        return trimmed
