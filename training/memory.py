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

Cheaper variants (trimming only once RSS has grown, keeping freed pages in the heap) were
measured in ``benchmarks/memory_bench.py`` and did not clearly pay off. Batches also run in
micro-batches (``TrainConfig.micro_batch_tokens``; ``trainer.accumulate_batch``), which bounds
a step's working set: peak 5.55 -> 3.73 GB at the defaults in fp32.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

PAD_MULTIPLE = 32


@functools.cache
def _libc_fn(symbol: str):
    """A glibc allocator function, or None (musl, macOS, no libc found): nothing to do there."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return getattr(ctypes.CDLL(name), symbol)
    except (OSError, AttributeError):
        return None


def _malloc_trim():
    fn = _libc_fn("malloc_trim")
    if fn is not None:
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
