"""Start the server: bind, print the ready line, serve until SIGTERM/SIGINT, drain, exit."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys

import uvicorn

from ..model import EdgeModel
from .app import ServeOptions, Server

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: str):
        super().__init__(config)
        self.ready = ready

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()  # a drained shutdown exits 0; uvicorn would re-raise the signal

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            print(self.ready, flush=True)  # a desktop app waits for this line (docs/serve.md)


def serve(model: EdgeModel, host: str = "127.0.0.1", port: int = 8000, options: ServeOptions | None = None,
          grace: float = 30.0, log_level: str = "warning") -> None:
    """Serve ``model`` on ``host:port`` (port 0: a free one, printed in the ready line) until
    SIGTERM or SIGINT; then stop accepting, let in-flight requests finish for up to ``grace``
    seconds, and return."""
    server = Server(model, options or ServeOptions())
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without
    # it a streamed token waits for the client's delayed ACK (about 40 ms a request on Linux)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    config = uvicorn.Config(server.app, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=grace, server_header=False)
    ready = f"alter-edge serve: listening on http://{shown}:{bound} (models: {', '.join(server.tasks)})"
    try:
        asyncio.run(_Uvicorn(config, ready).serve(sockets=[sock]))
    finally:
        sock.close()
        sys.stdout.flush()
