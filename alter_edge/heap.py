"""The C heap: give its free pages back to the system, and read this process's RSS.

Torch-free; training (after each step, ``training.memory``) and the runtime (after parsing a
tokenizer) both trim here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os


@functools.cache
def libc_fn(symbol: str):
    """A glibc allocator function, or None (musl, macOS, no libc found): nothing to do there."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return getattr(ctypes.CDLL(name), symbol)
    except (OSError, AttributeError):
        return None


def _malloc_trim():
    fn = libc_fn("malloc_trim")
    if fn is not None:
        fn.argtypes = [ctypes.c_size_t]
        fn.restype = ctypes.c_int
    return fn


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere
    nothing); whether it trimmed. Freed pages inside glibc's arenas otherwise stay resident:
    parsing SmolLM2's tokenizer.json frees about 17 MB, and a training step's ever new batch
    shapes leave chunks glibc cannot reuse (``training.memory``)."""
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
