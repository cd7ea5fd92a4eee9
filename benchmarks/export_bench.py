"""Export benchmark (bundle format v2) beside onnxruntime-genai's model builder, in one run.

Each round runs, one after another (interleaved, each in its own process under GNU time):
``alter-edge export CKPT --task all --int8`` and ``--task all --int4``, then the
onnxruntime-genai builder on the plain base model at int8 and int4 (``.venv-genai``, set up by
``bash scripts/anchors.sh genai``; skipped with a message when missing). One fp32 export
(``--task none --fp32``) gives the fp32 graph size the ratios are taken against. Printed:
median wall time and peak RSS per command, bundle and graph sizes, node counts, and the int8
graphs' paired dev-split metric drops with their 95% intervals (from validation.json).

    HF_HUB_OFFLINE=1 python benchmarks/export_bench.py --checkpoint runs/quickstart/checkpoint \\
        --rounds 2 --out runs/export-bench

Without ``--checkpoint`` a random-adapter SmolLM2-135M checkpoint (lora, 12 blocks, the tasks of
``--data``) is made first: fine for time, size and nodes, meaningless for quality.

``--families`` instead times, for each decoder family's tiny random model
(``alter_edge.testing.FAMILY_CONFIGS``, saved as a Hugging Face folder, with a random-adapter
checkpoint over it), the export's build step (the multi-task graph and a per-task graph for each
task, no validation; one process: load the checkpoint, build, write) beside onnxruntime-genai's
builder on the same folder, interleaved A B A B, each in its own process under GNU time; printed:
median seconds of each and the ratio ours / genai (the goal: at most 2):

    HF_HUB_OFFLINE=1 python benchmarks/export_bench.py --families --rounds 3 --out runs/export-bench-families
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from alter_edge.testing import cpu_flags, make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
GENAI = ROOT / ".venv-genai" / "bin" / "python"


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` under GNU time: wall seconds, peak RSS (MB), return code."""
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", r.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    h, m, s = wall.groups() if wall else (None, "0", "nan")
    seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    out = {"seconds": round(seconds, 1), "peak_rss_mb": round(int(rss.group(1)) / 1024) if rss else None,
           "rc": r.returncode}
    if r.returncode:
        print(r.stdout[-2000:], r.stderr[-3000:], file=sys.stderr)
        own = [x for x in r.stderr.split("\tCommand being timed")[0].splitlines()
               if x.strip() and not x.startswith("Command exited with")]
        out["error"] = own[-1][:200] if own else ""  # the command's last stderr line (its exception)
    return out


def dir_mb(d: Path, pattern: str = "*") -> float:
    return round(sum(p.stat().st_size for p in d.rglob(pattern) if p.is_file()) / 1e6, 1)


def build_worker(checkpoint: Path, out: Path, precision: str) -> None:
    """The export's build step alone: the multi-task graph and one per-task graph a task, one
    weight file, no validation."""
    from alter_edge.export.builder import BuildSpec, DecoderBuilder
    from alter_edge.export.graph import WeightFile
    from alter_edge.training.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    builder = DecoderBuilder(ck.model)
    out.mkdir(parents=True, exist_ok=True)
    wf = WeightFile(out / f"weights.{precision}.bin")
    builder.build(out / f"model.{precision}.onnx", BuildSpec("multitask"), precision, wf)
    for spec in ck.tasks:
        builder.build(out / f"task-{spec.name}.{precision}.onnx", BuildSpec("task", spec.id), precision, wf)
    wf.close()


def families_bench(args) -> None:
    """Per family: our build step beside onnxruntime-genai's builder on the same tiny model."""
    from alter_edge.testing import FAMILY_CONFIGS, make_tiny_family, make_tokenizer

    work = args.out / "families"
    tok = work / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        make_tokenizer(tok)
    names = args.family or sorted(FAMILY_CONFIGS)
    for f in names:
        if not (work / f / "base" / "config.json").is_file():
            make_tiny_family(f, work / f / "base", tok)
        if not (work / f / "ck" / "state.json").is_file():
            make_tiny_checkpoint(work / f / "ck", work / f / "base", kind="lora+attn", num_top_layers=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not GENAI.is_file():
        print("onnxruntime-genai: .venv-genai missing (bash scripts/anchors.sh genai); its column is skipped")
    runs: dict[tuple[str, str, str], list[dict]] = {}
    failed: dict[tuple[str, str], str] = {}  # (family, precision) the genai builder failed on -> why; not retried
    for r in range(args.rounds):
        for precision in args.precisions:
            for f in names:
                ours = [sys.executable, str(Path(__file__).resolve()), "--build-worker", str(work / f / "ck"),
                        str(work / f / f"ours-{precision}"), precision]
                res = timed(ours, env)
                runs.setdefault((f, precision, "ours"), []).append(res)
                line = f"round {r + 1} {f} {precision}: ours {res['seconds']} s"
                if GENAI.is_file() and (f, precision) not in failed:
                    out = work / f / f"genai-{precision}"
                    shutil.rmtree(out, ignore_errors=True)
                    g = timed([str(GENAI), "-m", "onnxruntime_genai.models.builder", "-i", str(work / f / "base"),
                               "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(work / "genai-cache")], env)
                    if g["rc"]:
                        failed[(f, precision)] = g.get("error", "")
                    else:
                        runs.setdefault((f, precision, "genai"), []).append(g)
                    line += f", genai builder {g['seconds']} s" + (f" (failed, rc {g['rc']})" if g["rc"] else "")
                print(line, flush=True)
    print(f"\nCPU: {cpu_flags()}; {args.rounds} interleaved rounds, median wall seconds (process start to exit)")
    print(f"{'family':<13} {'precision':<9} {'ours s':>7} {'genai s':>8} {'ours/genai':>11}")
    results = []
    for precision in args.precisions:
        for f in names:
            ours_s = statistics.median(x["seconds"] for x in runs[(f, precision, "ours")])
            genai = runs.get((f, precision, "genai"))
            genai_s = statistics.median(x["seconds"] for x in genai) if genai else None
            ratio = ours_s / genai_s if genai_s else None
            note = "" if genai_s else (f"builder failed: {failed[(f, precision)]}" if (f, precision) in failed
                                       else "not run")
            print(f"{f:<13} {precision:<9} {ours_s:7.1f} {genai_s if genai_s else float('nan'):8.1f} "
                  f"{ratio if ratio else float('nan'):11.2f} {note}")
            results.append({"family": f, "precision": precision, "ours_seconds": ours_s, "genai_seconds": genai_s,
                            "ratio": ratio, "genai": note or "ran"})
    (args.out / "export_bench_families.json").write_text(json.dumps({"cpu": cpu_flags(), "rounds": args.rounds,
                                                                     "results": results}, indent=2) + "\n")
    shutil.rmtree(work / "genai-cache", ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--build-worker":
        build_worker(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", action="store_true", help="per family: our build step beside genai's builder")
    ap.add_argument("--family", action="append", default=None, help="with --families: only these (repeatable)")
    ap.add_argument("--precisions", nargs="+", default=["int4", "fp32"], choices=["fp32", "int8", "int4"],
                    help="with --families")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None, help="training JSONL (its dev split is the held-out set)")
    ap.add_argument("--out", type=Path, default=Path("runs/export-bench"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.families:
        families_bench(args)
        return
    ck = args.checkpoint
    if ck is None:
        if args.data is None:
            ap.error("without --checkpoint, --data gives the tasks of the random-adapter checkpoint")
        ck = args.out / "random-checkpoint"
        if not (ck / "state.json").is_file():
            # lora in the top 12 blocks, attention and MLP
            make_tiny_checkpoint(ck, "smollm2-135m", kind="lora+attn", num_top_layers=12, init_std=0.002,
                                 data=args.data)
    from alter_edge.base_model import resolve_base_model

    hf_dir = resolve_base_model("smollm2-135m")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ae = [sys.executable, "-m", "alter_edge.cli"]
    data = ["--data", str(args.data)] if args.data else []

    def ours(precision: str, tasks: str = "all") -> list[str]:
        return [*ae, "export", str(ck), "--task", tasks, f"--{precision}", "--out",
                str(args.out / f"ours-{precision}-{tasks}"), "--overwrite", "--quiet", "--threads",
                str(args.threads), *data]

    def genai(precision: str) -> list[str]:
        return [str(GENAI), "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o",
                str(args.out / f"genai-{precision}"), "-p", precision, "-e", "cpu",
                "-c", str(args.out / "genai-cache")]

    runs: dict[str, list[dict]] = {}
    plan = [("ours int8 --task all", ours("int8")), ("ours int4 --task all", ours("int4"))]
    if GENAI.is_file():
        plan += [("genai builder int8 (plain base)", genai("int8")),
                 ("genai builder int4 (plain base)", genai("int4"))]
    else:
        print("onnxruntime-genai: .venv-genai missing (bash scripts/anchors.sh genai); its rows are skipped")
    fp32 = timed(ours("fp32", "none"), env)
    for r in range(args.rounds):
        for name, cmd in plan:
            res = timed(cmd, env)
            runs.setdefault(name, []).append(res)
            print(f"round {r + 1} {name}: {res}", flush=True)
    fp32_graph = dir_mb(args.out / "ours-fp32-none")
    results = {"cpu": cpu_flags(), "threads": args.threads, "checkpoint": str(ck), "runs": runs,
               "fp32_export": fp32, "fp32_bundle_mb": fp32_graph}
    print(f"\nCPU: {results['cpu']}; {args.rounds} interleaved rounds, medians")
    print(f"{'command':<36} {'wall s':>8} {'peak MB':>8} {'output MB':>10} {'x fp32':>7}")
    for name, rs in runs.items():
        out_dir = args.out / ("ours-" + name.split()[1] + "-all" if name.startswith("ours")
                              else "genai-" + name.split()[2])
        mb = dir_mb(out_dir)
        results.setdefault("sizes_mb", {})[name] = mb
        print(f"{name:<36} {statistics.median(x['seconds'] for x in rs):8.1f} "
              f"{statistics.median(x['peak_rss_mb'] or 0 for x in rs):8.0f} {mb:10.1f} {mb / fp32_graph:7.3f}")
    print(f"{'ours fp32 --task none (reference)':<36} {fp32['seconds']:8.1f} {fp32['peak_rss_mb'] or 0:8.0f} "
          f"{fp32_graph:10.1f} {1:7.3f}")
    for precision in ("int8", "int4"):
        v = json.loads((args.out / f"ours-{precision}-all" / "validation.json").read_text())
        nodes = {k: f["nodes"] for k, f in v["build"].items() if not k.startswith("(reference)")}
        results.setdefault("nodes", {})[precision] = nodes
        print(f"\n{precision} graphs, nodes: " + ", ".join(f"{k} {n}" for k, n in nodes.items()))
        for c in v["checks"]:
            if c["check"] == "quantized_vs_fp32" and c["graph"].startswith("model."):
                results.setdefault("quality", {})[precision] = c
                for t, d in c["metric_drop_points"].items():
                    lo, hi = c["metric_drop_interval95"][t]
                    m = c["metric"][t]
                    print(f"  {t:<16} fp32 {m['fp32']:.3f}  {precision} {m[precision]:.3f}  drop {d:+.2f} points "
                          f"[{lo:+.2f}, {hi:+.2f}]  ({m['rows']} dev rows, {m['changed_answers']} answers changed)")
                print(f"  top-1 agreement {c['top1_agreement']:.3f}")
    for name in [n for n in runs if n.startswith("genai")]:
        model = next((args.out / ("genai-" + name.split()[2])).glob("*.onnx"), None)
        if model is not None:
            import onnx

            results.setdefault("nodes", {})[name] = len(onnx.load(model, load_external_data=False).graph.node)
            print(f"{name}: {results['nodes'][name]} nodes")
    (args.out / "export_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(args.out / "genai-cache", ignore_errors=True)


if __name__ == "__main__":
    main()
