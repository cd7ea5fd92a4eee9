"""Greedy tokens of a real bundle in headless Chromium (the JavaScript runtime on
onnxruntime-web's WASM) against the Python runtime on the same graph: dev prompts of the
checkpoint's data (the built-in mix by default), one request per row, ``--new-tokens`` each.
Printed: the share of the Python runtime's tokens the browser gave at the same position before
the rows' first difference, and the rows that differ.

    python benchmarks/js_bench/exactness.py BUNDLE [--rows 32] [--new-tokens 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def dev_rows(tasks: list[str], n: int) -> list[dict]:
    """``n`` dev rows of the built-in mix, the tasks taken in turn."""
    from alter_edge.data import load_task_rows, split_task_rows

    rows, source = load_task_rows(None)
    dev = split_task_rows(rows, source)[1]
    by_task = {t: [r for r in dev if r.task == t] for t in tasks}
    out = []
    k = 0
    while len(out) < n and any(by_task.values()):
        t = tasks[k % len(tasks)]
        if by_task[t]:
            r = by_task[t].pop(0)
            out.append({"task": r.task, "text": r.input})
        k += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if shutil.which("node") is None:
        raise SystemExit("exactness.py needs node 20+ and js/web/node_modules (scripts/setup.sh)")
    from alter_edge.runtime import EdgeModel
    from alter_edge.web import Mount, make_server, web_mounts

    model = EdgeModel.load(args.bundle, threads=args.threads, precision=args.precision)
    rows = dev_rows(model.tasks.names, args.rows)
    ref = [model.generate(r["text"], task=r["task"], max_new_tokens=args.new_tokens, truncate=True).token_ids
           for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rows.json").write_text(json.dumps(rows))
        mounts = web_mounts(args.bundle, extra={"/bench/": HERE / "pages"})
        mounts.insert(0, Mount("/bench/data/", Path(tmp).resolve(), no_store=True))
        srv = make_server(mounts, 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        url = (f"http://127.0.0.1:{srv.server_address[1]}/bench/exact.html?threads={args.threads}"
               f"&newTokens={args.new_tokens}&precision={args.precision or ''}")
        p = subprocess.run(["node", "drive.mjs", "--timeout", "3000", url], cwd=ROOT / "js" / "web" / "test",
                           capture_output=True, text=True, timeout=3600)
        srv.shutdown()
    if p.returncode != 0:
        raise SystemExit(f"the browser failed:\n{p.stderr[-2000:]}")
    got = json.loads(p.stdout.strip().splitlines()[-1])
    if "error" in got:
        raise SystemExit(got["error"])
    same = total = 0
    differ = []
    for i, (r, a, b) in enumerate(zip(rows, ref, got["tokenIds"], strict=True)):
        k = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        same += k
        total += len(a)
        if a != b:
            differ.append({"row": i, "task": r["task"], "first_difference": k, "python": a, "browser": b})
    print(f"{args.bundle}: {len(rows)} dev rows x {args.new_tokens} new tokens, {args.threads} WASM threads: "
          f"{same}/{total} = {100 * same / max(total, 1):.1f}% of the Python runtime's greedy tokens equal before "
          f"each row's first difference; {len(rows) - len(differ)}/{len(rows)} rows identical")
    for d in differ:
        print(f"  row {d['row']} ({d['task']}): first difference at token {d['first_difference']}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "python": ref, "browser": got["tokenIds"],
                                         "equal_share": same / max(total, 1), "differ": differ}, indent=1) + "\n")


if __name__ == "__main__":
    main()
