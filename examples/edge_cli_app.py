"""A minimal command-line app embedding the alter-edge runtime (numpy + onnxruntime +
tokenizers; no torch).

    python examples/edge_cli_app.py BUNDLE --task TASK
    > is red a colour
    yes  (0.93)

Each line typed is one request: a classify task prints the best label and its probability, a
generate task streams its answer token by token. An empty line or Ctrl-D quits.
"""

from __future__ import annotations

import argparse
import sys
import time

from alter_edge.runtime import EdgeModel


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--task", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = EdgeModel.load(args.bundle, threads=args.threads)
    spec = model.tasks.get(args.task)  # an unknown task lists the known ones
    sys.stderr.write(f"loaded {args.bundle} in {time.perf_counter() - t0:.2f}s; task {spec.name} "
                     f"({spec.kind}); tasks: {', '.join(model.tasks.names)}\n")
    for line in sys.stdin:
        text = line.strip()
        if not text:
            break
        if spec.kind == "classify":
            c = model.classify(text, spec.name, truncate=True)
            sys.stdout.write(f"{c.label}  ({c.probability:.2f})\n")
        else:
            t1, n = time.perf_counter(), 0
            for ev in model.stream(text, task=spec.name, max_new_tokens=args.max_new_tokens,
                                   truncate=True):
                sys.stdout.write(ev.text)
                sys.stdout.flush()
                n += ev.token_id is not None
            sys.stdout.write(f"\n  [{n} tokens, {n / (time.perf_counter() - t1):.1f} tok/s]\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
