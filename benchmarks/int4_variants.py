"""int4 quantizer variants on one checkpoint, each scored by the export's own int4 gate.

    python benchmarks/int4_variants.py runs/quickstart/checkpoint --json runs/int4-variants.json \\
        --variant "rtn:" --variant "gptq+zp+lm8: --int4-method gptq --int4-zero-points --int4-8bit lm_head"

Loads the checkpoint once, builds the fp32 multi-task graph once (the reference), answers the
dev split with it once, then for each variant builds the int4 multi-task graph with that
variant's ``alter-edge export`` int4 flags and runs ``export.validate.check_quantized`` on it,
exactly the check ``alter-edge export --int4`` runs (the whole dev split, paired per task,
the default budget and top-1 gate unless the flags change them). Printed and written: per
variant and task the drop in points with its paired 95% interval, top-1 agreement, the int4
weight file's bytes, the seconds to calibrate and build, and whether it passes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--variant", action="append", metavar="NAME:FLAGS", required=True,
                    help="a name, a colon, and the int4 flags of `alter-edge export` (none: the defaults)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--heldout-rows", type=int, default=None, help="per task (default: the whole dev split)")
    ap.add_argument("--keep", type=Path, default=None, help="keep each variant's graph under this folder")
    ap.add_argument("--json", type=Path, default=None)
    return ap.parse_args()


def variant_options(base, flags: str):
    """``ExportOptions`` with a variant's int4 flags, parsed by the CLI's own options."""
    import click

    from alter_edge.cli.export import EXPORT_OPTIONS, export_options

    @click.command()
    def cmd(**params):
        return params

    for option in reversed(EXPORT_OPTIONS):
        cmd = option(cmd)
    params = cmd.main(["--out", "unused", *shlex.split(flags)], standalone_mode=False)
    opts = export_options(params)
    return replace(opts, tasks=None, int4=True, threads=base.threads, heldout_rows=base.heldout_rows,
                   progress=False)


def main() -> None:
    a = parse_args()
    from alter_edge.export.builder import BuildSpec
    from alter_edge.export.pipeline import ExportOptions, _Export
    from alter_edge.export.validate import check_quantized
    from alter_edge.testing import cpu_flags
    from alter_edge.training.checkpoint import load_checkpoint

    base = ExportOptions(tasks=None, int4=True, threads=a.threads, heldout_rows=a.heldout_rows, progress=False)
    ck = load_checkpoint(a.checkpoint)
    ex = _Export(ck, base, {})

    class _Bar:
        def update(self):
            pass

    ex.bar = _Bar()
    work = Path(tempfile.mkdtemp(prefix="int4-variants-"))
    t0 = time.perf_counter()
    (_, fp32_path), = ex.build_all("fp32", work / "fp32", [BuildSpec("multitask")], False)
    src = ex.runner(fp32_path)
    fp32_preds: dict[str, list[str]] = {}
    results = []
    print(f"{'variant':<22} {'pass':>4} {'top1':>6} {'weights MB':>10} {'build s':>8}  drops (points, 95% interval)")
    for spec in a.variant:
        name, _, flags = spec.partition(":")
        opts = variant_options(base, flags)
        ex.opts = opts
        t1 = time.perf_counter()
        plan = ex.quant_plan("int4")
        where = (a.keep / name) if a.keep else work / name
        (_, path), = ex.build_all("int4", where, [BuildSpec("multitask")], True, plan)
        build_s = time.perf_counter() - t1
        q = ex.runner(path)
        rec = check_quantized(src, q, path.name, "int4", ex.cases, ex.heldout, ck.tokenizer, ex.pad, ex.eos,
                              opts.int4_budget, opts.min_top1_int4, ex.new_tokens, fp32_preds, opts.steps)
        del q
        size = (where / "weights.int4.bin").stat().st_size
        row = {"variant": name, "flags": flags, "passed": rec["passed"], "top1": rec["top1_agreement"],
               "weights_bytes": size, "build_seconds": round(build_s, 1),
               "quantization": ex.info["quantization"].get("int4"),
               "drops": rec["metric_drop_points"], "intervals": rec["metric_drop_interval95"],
               "metric": rec["metric"]}
        results.append(row)
        drops = ", ".join(f"{t} {d:+.1f} [{lo:+.1f}, {hi:+.1f}]" for (t, d), (lo, hi)
                          in zip(rec["metric_drop_points"].items(), rec["metric_drop_interval95"].values(),
                                 strict=True))
        print(f"{name:<22} {'yes' if rec['passed'] else 'NO':>4} {rec['top1_agreement']:6.3f} {size / 1e6:10.2f} "
              f"{build_s:8.1f}  {drops}", flush=True)
    out = {"checkpoint": str(a.checkpoint), "machine": cpu_flags(), "seconds": round(time.perf_counter() - t0, 1),
           "fp32_metric": {t: m["fp32"] for t, m in results[0]["metric"].items()} if results else {},
           "variants": results}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"machine: {out['machine']}; {out['seconds']}s", file=sys.stderr)


if __name__ == "__main__":
    main()
