"""``alter-edge web``: the demo page and one bundle, served to a browser on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from .common import CONTEXT, handle_errors


@click.command("web", context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port on 127.0.0.1 (0: a free one; the ready line names it).")
@click.option("--js-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The js/ folder holding src/, web/page/ and web/node_modules/ (default: the checkout's).")
@handle_errors()
def web_cmd(bundle: Path, port: int, js_root: Path | None) -> None:
    """Serve the demo page with a bundle on http://127.0.0.1:PORT/ (cross-origin isolated,
    so onnxruntime-web runs multi-threaded WASM). The page lists the bundle's tasks, runs one
    batch mixing them, streams each row and shows load time, time to first token and tokens/s.

    \b
    alter-edge web bundle --port 8765
    """
    from alter_edge.web import make_server, web_mounts

    server = make_server(web_mounts(bundle, js_root), port)
    host, bound = server.server_address[:2]
    click.echo(f"serving {bundle} on http://{host}:{bound}/ (Ctrl-C stops)", err=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
