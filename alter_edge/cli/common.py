"""What every command shares: help options, one-line errors, the missing-extra message.

Library errors name options by their parameter names in backticks (`overwrite`); here each
becomes the flag of the running command that sets it (--overwrite), so the library never
names a flag and the user still reads one.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

import click

from alter_edge.errors import AlterEdgeError
from alter_edge.runtime.bundle import PRECISIONS

CONTEXT = {"help_option_names": ["-h", "--help"]}

# top-level modules each install extra brings (pyproject.toml [project.optional-dependencies])
EXTRA_MODULES = {
    "train": ("torch", "transformers", "safetensors", "gguf", "accelerate", "yaml"),
    "export": ("torch", "transformers", "safetensors", "onnx", "gguf", "accelerate"),
    "ray": ("ray",),
    "serve": ("uvicorn", "starlette", "prometheus_client"),
}

_OPTION_REF = re.compile(r"`([a-z_][a-z0-9_]*)`")


def flag_for(name: str, ctx: click.Context | None) -> str | None:
    """The flag of the running command whose parameter is ``name`` (``tasks`` -> ``--task``)."""
    while ctx is not None:
        for p in ctx.command.params:
            if p.name == name and isinstance(p, click.Option):
                return max(p.opts, key=len)
        ctx = ctx.parent
    return None


def cli_message(message: str, ctx: click.Context | None = None) -> str:
    """``message`` with each `parameter` the running command has shown as its flag."""
    ctx = ctx if ctx is not None else click.get_current_context(silent=True)

    def sub(m: re.Match) -> str:
        return flag_for(m.group(1), ctx) or m.group(0)

    return _OPTION_REF.sub(sub, message)


def missing_extra_message(command: str, extra: str, module: str) -> str:
    return (f"alter-edge {command} needs the '{extra}' extra, which is not installed "
            f"(no module named {module!r}): pip install 'alter-edge[{extra}]'")


def handle_errors(extra: str | None = None) -> Callable:
    """Decorator: library errors (and a missing file) become one ClickException line, exit 1;
    a module of ``extra`` that is not installed becomes the pip command that installs it."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (AlterEdgeError, FileNotFoundError, FileExistsError) as e:
                raise click.ClickException(cli_message(str(e))) from e
            except ModuleNotFoundError as e:
                top = (e.name or "").split(".")[0]
                if extra is None or top not in EXTRA_MODULES[extra]:
                    raise
                ctx = click.get_current_context(silent=True)
                name = ctx.info_name if ctx is not None else fn.__name__
                raise click.ClickException(missing_extra_message(name, extra, top)) from e

        return wrapper

    return deco


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def no_prefix_cache_option(fn):
    return click.option("--no-prefix-cache", "no_prefix_cache", is_flag=True,
                        help="Run every prompt whole (no per-task prefix cache; for comparisons).")(fn)


def threads_precision_options(fn):
    """``--threads`` and ``--precision``, the session options of run, bench and serve."""
    fn = click.option("--threads", type=click.IntRange(min=1), default=None,
                      help="onnxruntime intra-op threads (default: one per core).")(fn)
    fn = click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                      help="Graph precision (default: the bundle's best: int8 > int4 > fp32).")(fn)
    return fn
