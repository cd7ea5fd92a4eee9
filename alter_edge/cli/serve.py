"""``alter-edge serve``: the bundle behind a local OpenAI-compatible HTTP server (the
``serve`` extra: uvicorn, Starlette, prometheus_client)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from .common import CONTEXT, handle_errors, no_prefix_cache_option, threads_precision_options


@click.command("serve", context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any other than loopback needs --api-key-file (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0: a free one; the ready line names it).")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file holding the API key clients send as 'Authorization: Bearer KEY' (refused "
                   "when others may read it or its group may write it: chmod 600 FILE).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without an API key.")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Rows decoding together (requests of any task share the batch).")
@click.option("--max-queue", type=click.IntRange(min=0), default=64, show_default=True,
              help="Requests waiting for a slot; one more gets 429 with Retry-After.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None,
              help="The largest max_tokens a request may ask (default: the bundle's max_new_tokens).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
              help="Each request's deadline in seconds from its arrival.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1 << 20, show_default=True,
              help="Request bodies over this size get 413.")
@click.option("--max-classify-inputs", type=click.IntRange(min=1), default=None,
              help="Inputs one /v1/classify request may hold; more get 400 [default: 256].")
@click.option("--grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On SIGTERM: seconds in-flight requests get to finish.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="warning", show_default=True,
              help="The server's log level, uvicorn's and alter-edge's (request bodies are never logged).")
@click.option("--prefill-chunk", type=click.IntRange(min=0), default=None,
              help="Prompt tokens fed between two decode steps (a longer prompt runs in chunks); "
                   "0: each prompt whole, in a step of its own [default: 128].")
@no_prefix_cache_option
@threads_precision_options
@handle_errors(extra="serve")
def serve_cmd(bundle, host, port, api_key_file, insecure, max_batch, max_queue, max_tokens, timeout,
              max_body_bytes, max_classify_inputs, grace, log_level, prefill_chunk, no_prefix_cache, threads,
              precision) -> None:
    """Serve a bundle over HTTP in OpenAI's wire format, one model per task.

    \b
    alter-edge serve bundle --port 8000
    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"model": "sentiment", "prompt": "a fine film", "max_tokens": 8}'

    Requests of every task join one running batch on the multi-task graph. SIGTERM stops
    accepting, lets in-flight requests finish for --grace seconds, then exits.
    """
    import logging

    from alter_edge.runtime.serve import is_loopback, read_api_key, serve
    from alter_edge.runtime.serve.app import ServeOptions

    key = None
    if api_key_file is not None:
        key = read_api_key(api_key_file)
    elif not is_loopback(host) and not insecure:
        raise click.UsageError(f"--host {host} is not a loopback address: give --api-key-file "
                               "(clients then send 'Authorization: Bearer KEY'), or --insecure to serve "
                               "without a key")
    from alter_edge.runtime.model import EdgeModel

    ours = logging.getLogger("alter_edge")
    if ours.getEffectiveLevel() > logging.getLevelName(log_level.upper()):  # never quieter than -v
        ours.setLevel(log_level.upper())

    # no spinning: idle onnxruntime workers would busy-wait on the cores the HTTP thread needs
    model = EdgeModel.load(bundle, threads=threads, precision=precision, spinning=False,
                           prefix_cache=not no_prefix_cache)
    options = ServeOptions(max_batch=max_batch, max_queue=max_queue, max_tokens=max_tokens, timeout=timeout,
                           max_body_bytes=max_body_bytes, api_key=key)
    if max_classify_inputs is not None:
        options = dataclasses.replace(options, max_classify_inputs=max_classify_inputs)
    if prefill_chunk is not None:
        options = dataclasses.replace(options, prefill_tokens=prefill_chunk or None)
    serve(model, host, port, options, grace=grace, log_level=log_level)
