"""``alter-edge serve``: a local OpenAI-compatible HTTP server for a bundle (docs/serve.md).

Needs the ``serve`` extra (uvicorn, Starlette, prometheus_client); the rest of the runtime
never imports this package.
"""

from __future__ import annotations

from .run import is_loopback, read_api_key, serve

__all__ = ["is_loopback", "read_api_key", "serve"]
