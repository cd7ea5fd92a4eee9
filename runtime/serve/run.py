"""Start the server: bind, print the ready line, serve until SIGTERM/SIGINT, drain, exit."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import stat
import sys
from pathlib import Path

import uvicorn

from alter_edge.errors import ConfigError

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


MAX_KEY_FILE_BYTES = 4096


def read_api_key(path: str | Path) -> str:
    """The API key in ``path``: one line of printable ASCII (what a client can send in an
    ``Authorization`` header), surrounding whitespace dropped. Refused, as ssh refuses a private
    key, when the file is not a regular file, is owned by another user (root aside), or is
    writable by its group or readable or writable by other users (POSIX; ``chmod 600`` fixes
    it; a group may read it); also when it is empty, not UTF-8, or more than one line."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"the API key file {path} cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"the API key file {path} is not a regular file")
    if os.name == "posix":
        loose = [what for bit, what in ((stat.S_IWGRP, "writable by its group"),
                                        (stat.S_IROTH, "readable by other users"),
                                        (stat.S_IWOTH, "writable by other users")) if st.st_mode & bit]
        if loose:
            raise ConfigError(f"the API key file {path} is {' and '.join(loose)} (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}): anyone who reads it holds the key; "
                              f"chmod 600 {path}")
        if st.st_uid not in (os.getuid(), 0):
            raise ConfigError(f"the API key file {path} belongs to another user (uid {st.st_uid}): "
                              "whoever owns it can change the key; use a file of your own")
    if st.st_size > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"the API key file {path} is {st.st_size} bytes; a key is one line "
                          f"(at most {MAX_KEY_FILE_BYTES} bytes)")
    raw = path.read_bytes()[:MAX_KEY_FILE_BYTES + 1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"the API key file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                          f"offset {e.start})") from None
    key = text.strip()
    if not key:
        raise ConfigError(f"the API key file {path} is empty")
    if len(key.splitlines()) > 1:
        raise ConfigError(f"the API key file {path} holds {len(key.splitlines())} lines; the key is one line")
    bad = next((i for i, c in enumerate(key) if not "!" <= c <= "~"), None)
    if bad is not None:
        raise ConfigError(f"the API key file {path} holds {key[bad]!r} at character {bad}: a key is printable "
                          "ASCII without spaces (what a client sends in its Authorization header)")
    return key


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
