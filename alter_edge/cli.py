"""The ``alter-edge`` command line. Library errors become one clear line (exit 1)."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import AlterEdgeError

CONTEXT = {"help_option_names": ["-h", "--help"]}


def friendly_errors(fn):
    """Turn library errors (and a missing file) into a ClickException: one line, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (AlterEdgeError, FileNotFoundError, FileExistsError) as e:
            raise click.ClickException(str(e)) from e

    return wrapper


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version")
@click.option("-v", "--verbose", is_flag=True, help="Log more (INFO level).")
def main(verbose: bool) -> None:
    """alter-edge: Mixture-of-Task-Adapters for small LMs, exported to ONNX for CPU inference.

    \b
    alter-edge train --data tasks.jsonl --out runs/mta
    alter-edge eval runs/mta --data dev.jsonl
    alter-edge export runs/mta --task all --int8 --out bundle
    alter-edge run bundle --task sentiment "a fine film"
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _register_optional() -> None:
    """Commands that live with their stage (export/, runtime/)."""
    for module, names in (("alter_edge.runtime.cli", ("run_cmd", "bench_cmd")),
                          ("alter_edge.export.cli", ("export_cmd", "inspect_cmd"))):
        try:
            mod = __import__(module, fromlist=list(names))
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        for n in names:
            if hasattr(mod, n):
                main.add_command(getattr(mod, n))


from .train_cli import eval_cmd, train_cmd  # noqa: E402

main.add_command(train_cmd)
main.add_command(eval_cmd)
_register_optional()


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["main", "friendly_errors", "echo_json", "Path"]
