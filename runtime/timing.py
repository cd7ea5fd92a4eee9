"""The decode timing loop and the peak-memory reading that ``alter-edge bench``,
``benchmarks/decode_bench.py`` and ``benchmarks/t5_bench.py`` share.

Standard library only: decode_bench loads this file by path in the anchors' own environments
(onnxruntime-genai's, llama.cpp's), which lack alter_edge, so every engine is timed by the same
code.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator


def timed_run(step_tokens: Callable[[int, int], Iterable], batch: int, n_new: int) -> tuple[float, float]:
    """``step_tokens(batch, n_new)`` yields once per generated step; returns (s to the first
    token, decode tokens/s over all rows after the first step)."""
    t0 = time.perf_counter()
    first, n = None, 0
    for _ in step_tokens(batch, n_new):
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    if first is None:
        raise RuntimeError("the engine generated no token")
    return first - t0, batch * (n - 1) / max(end - first, 1e-9)


def per_step(tokens: Iterable[tuple[int, int | None]], batch: int) -> Iterator[int | None]:
    """One yield per decode step of a ``(row, token)`` stream whose rows all decode together:
    a step is done when its last row has its token."""
    for row, tok in tokens:
        if row == batch - 1:
            yield tok


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB). On Linux, VmHWM: getrusage's ru_maxrss
    survives fork + exec, so a child started by a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KB on Linux
