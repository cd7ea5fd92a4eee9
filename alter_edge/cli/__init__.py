"""The ``alter-edge`` command line: a layer on top of the library (which never imports it).

Each command group lives in its own module and is registered here, explicitly. Modules
import no torch at load time, so ``alter-edge --help`` and ``run`` work on a runtime-only
install; a command that needs an extra says which one to install.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from alter_edge import __version__

from .common import CONTEXT
from .demo import demo_cmd
from .export import export_cmd, inspect_cmd
from .run import bench_cmd, run_cmd
from .serve import serve_cmd
from .train import eval_cmd, train_cmd
from .web import web_cmd


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
    alter-edge serve bundle --port 8000
    alter-edge web bundle --port 8765
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


for _cmd in (train_cmd, eval_cmd, export_cmd, inspect_cmd, run_cmd, bench_cmd, serve_cmd, web_cmd, demo_cmd):
    main.add_command(_cmd)

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
