"""alter-edge: Mixture-of-Task-Adapters for small language models, shipped to the edge.

The top-level package is torch-free: it holds the task registry, data loading, prompts and
metrics, which training, export and the runtime all share. Torch code lives in
``alter_edge.mta`` / ``alter_edge.inject`` / ``alter_edge.training`` / ``alter_edge.export``.
"""

from __future__ import annotations

__version__ = "0.1.0"
