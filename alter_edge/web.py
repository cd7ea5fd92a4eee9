"""The static file server behind ``alter-edge web``: the demo page, the JavaScript package, the
browser files it needs from ``node_modules`` and one bundle, from 127.0.0.1 only.

Every response carries ``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp`` (the page is then cross-origin isolated, which
multi-threaded WASM needs). Each URL prefix maps to one directory (``Mount``); a request is
answered only with a regular file inside its mount's directory, symlinks resolved: no
directory listings, no ``..``, no encoded separators, nothing outside the roots. The bundle's
files are sent with ``Cache-Control: no-store``: the page keeps them in Cache Storage itself,
so the HTTP cache never hides a second download. Standard library only.
"""

from __future__ import annotations

import http.server
import logging
import posixpath
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from alter_edge.errors import AlterEdgeError

log = logging.getLogger(__name__)

REPO_JS = Path(__file__).resolve().parents[1] / "js"  # js/ next to the package in a checkout

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


class WebError(AlterEdgeError):
    """The page's files or the bundle cannot be served."""


@dataclass(frozen=True)
class Mount:
    prefix: str  # URL prefix, "/" first and last ("/bundle/")
    root: Path  # the directory it serves (resolved)
    no_store: bool = False  # Cache-Control: no-store (the bundle's files) instead of no-cache


def web_mounts(bundle: Path, js_root: Path | None = None, extra: dict[str, Path] | None = None) -> list[Mount]:
    """The demo page's URL space: / (js/web/page), /js/src/ and /js/web/src/ (the package's core
    and its browser layer), /vendor/ort/ and /vendor/tokenizers/ (browser builds from
    js/web/node_modules), /bundle/ (the bundle);
    ``extra`` adds prefixes ("/bench/": a folder) ahead of those (the benchmark's pages)."""
    js_root = Path(js_root or REPO_JS).resolve()
    bundle = Path(bundle).resolve()
    if not (bundle / "manifest.json").is_file():
        raise WebError(f"{bundle} is not a bundle: it has no manifest.json")
    page = js_root / "web" / "page"
    modules = js_root / "web" / "node_modules"
    need = {
        "the demo page (js/web/page)": page / "index.html",
        "the JavaScript package (js/src)": js_root / "src" / "model.js",
        "its browser layer (js/web/src)": js_root / "web" / "src" / "index.js",
        "onnxruntime-web": modules / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs",
        "@huggingface/tokenizers": modules / "@huggingface" / "tokenizers" / "dist" / "tokenizers.min.mjs",
    }
    for what, f in need.items():
        if not f.is_file():
            hint = (f": run `npm ci --prefix {js_root / 'web'}` (scripts/setup.sh does)" if "node_modules" in f.parts
                    else ": give `js_root` the js/ folder of an alter-edge checkout")
            raise WebError(f"{what} is missing ({f} not found){hint}")
    mounts = [
        Mount("/js/src/", (js_root / "src").resolve()),
        Mount("/js/web/src/", (js_root / "web" / "src").resolve()),
        Mount("/vendor/ort/", (modules / "onnxruntime-web" / "dist").resolve()),
        Mount("/vendor/tokenizers/", (modules / "@huggingface" / "tokenizers" / "dist").resolve()),
        Mount("/bundle/", bundle, no_store=True),
        Mount("/", page.resolve()),
    ]
    for prefix, root in (extra or {}).items():
        if not (prefix.startswith("/") and prefix.endswith("/") and len(prefix) > 2):
            raise WebError(f"mount prefix {prefix!r} must start and end with '/'")
        mounts.insert(0, Mount(prefix, Path(root).resolve(), no_store=True))
    return mounts


def resolve(mounts: list[Mount], raw_path: str) -> tuple[Mount, Path] | None:
    """The mount and the regular file a request path names, or None (then 404): a path with
    ``..``, ``.``, an empty segment, a backslash, a NUL or an encoded slash never resolves,
    nor does a symlink leading outside its root."""
    path = urllib.parse.urlsplit(raw_path).path
    if "%2f" in path.lower() or "%5c" in path.lower():
        return None
    path = urllib.parse.unquote(path)
    if "\\" in path or "\0" in path or not path.startswith("/"):
        return None
    if path.endswith("/"):
        path += "index.html"
    for m in mounts:
        if not path.startswith(m.prefix):
            continue
        rel = path[len(m.prefix):]
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts) or posixpath.isabs(rel):
            return None
        try:
            full = m.root.joinpath(*parts).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not full.is_relative_to(m.root) or not full.is_file():
            return None
        return m, full
    return None


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "alter-edge-web"
    protocol_version = "HTTP/1.1"  # keep-alive: the page fetches some thirty files
    mounts: list[Mount] = []
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._send(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(body=False)

    def _send(self, body: bool) -> None:
        found = resolve(self.mounts, self.path)
        if found is None:
            self._status(404, "not found")
            return
        mount, full = found
        size = full.stat().st_size
        with self.lock:
            key = urllib.parse.urlsplit(self.path).path
            self.counts[key] = self.counts.get(key, 0) + 1
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES.get(full.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "no-store" if mount.no_store else "no-cache")
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if not body:
            return
        with open(full, "rb") as f:
            try:
                while chunk := f.read(1 << 20):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def _status(self, code: int, text: str) -> None:
        data = f"{code} {text}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        log.info("%s %s", self.address_string(), format % args)


def make_server(mounts: list[Mount], port: int = 8765, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """A threaded HTTP server for ``mounts``, bound to ``host`` (loopback) and ``port`` (0: free)."""
    handler = type("Handler", (_Handler,), {"mounts": mounts, "counts": {}, "lock": threading.Lock()})
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise WebError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    server.daemon_threads = True
    return server


def request_counts(server: http.server.ThreadingHTTPServer) -> dict[str, int]:
    """GET/HEAD requests per path answered with a file so far (what the tests count)."""
    return dict(server.RequestHandlerClass.counts)


__all__ = ["Mount", "WebError", "make_server", "request_counts", "resolve", "web_mounts", "REPO_JS"]
