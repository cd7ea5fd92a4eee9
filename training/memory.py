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

from alter_edge.heap import libc_fn, rss_bytes, trim_heap

__all__ = ["PAD_MULTIPLE", "libc_fn", "rss_bytes", "trim_heap"]

PAD_MULTIPLE = 32
