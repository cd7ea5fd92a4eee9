"""Our 4-bit graphs beside onnxruntime-genai's int4 builder and llama.cpp's Q4_0 / Q4_K_M, all
scored the same way against the same fp32 reference on one checkpoint's dev split.

    bash scripts/anchors.sh genai llama-quantize
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/int4_anchors.py runs/quickstart/checkpoint \\
        --out runs/int4-anchors --max-rows 50 \\
        --ours "gptq+zp (default)=runs/int4-new/model.int4.onnx" \\
        --ours "rtn, symmetric=runs/int4-rtn/model.int4.onnx" \\
        --build "rtn+zp:--int4-method rtn" --build "gptq+zp, lm_head 8-bit:--int4-8bit lm_head"

(docs/export.md has the table and the full command.) An anchor whose tool or runtime fails on a
model gets a row saying so; the others go on.

The reference is our fp32 multi-task graph (checked against PyTorch by every export): per dev row
(the checkpoint's whole dev split, ``--max-rows`` caps it per task) its greedy answer, up to the
task's answer length (the export's own), ending with eos when it ended there.

What each 4-bit model is:

- ours (``--ours LABEL=GRAPH``: an int4 graph already built, e.g. a bundle's ``model.int4.onnx``;
  ``--build LABEL:FLAGS``: a multi-task int4 graph built here with those ``alter-edge export``
  int4 flags): the multi-task graph, every task through it, run by the runtime's own session
  and decode loop;
- onnxruntime-genai 0.18's builder (``.venv-genai``): per task, a Hugging Face folder of the base
  with that task's LoRA mixture merged into the weights (the export's own fold,
  ``LoraKind.merged_weight``), built at ``-p int4`` with each ``--genai`` option set (and once at
  fp32, a check of the merge and of the runtime), run by its generator API;
- llama.cpp (``.llama-quantize``: llama-quantize, convert_hf_to_gguf.py and the llama_cpp
  bindings from the sources llama-cpp-python 0.3.36 vendors): the same merged folders converted
  to an f32 GGUF, quantized with llama-quantize to each ``--llama`` type, run through
  llama_cpp's ``Llama.eval``.

Scored for every model, batch 1, each anchor in its own venv and process:

- answer-token top-1: teacher-forced on the fp32 answer (prompt, then each answer token), the
  share of answer positions (eos included) where the model's argmax is the fp32 token; and the
  first answer token alone;
- answer NLL increase: the mean negative log-likelihood of the fp32 answer tokens under the
  model, minus fp32's own (nats a token);
- the task metric on its own greedy answer (decoded only where its argmax left the reference
  path somewhere: where it never did, greedy walks that same path) against the gold targets (exact match / ROUGE-L,
  ``alter_edge.metrics.row_metric``), as a drop in points from fp32 with a paired 95% interval;
  and how many answers changed.

Sizes: the files a model needs (graph + weights; GGUF), in MB; "4 tasks" is what serving every
task takes (ours: one multi-task graph; the anchors: one merged model a task). Every step is
cached under ``--out`` (rerun to resume); the table is printed as markdown and written to
``--out``/anchors.json. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GENAI_PY = ROOT / ".venv-genai" / "bin" / "python"
LLAMA_DIR = ROOT / ".llama-quantize"  # bin/llama-quantize and libllama, py/ (convert_hf_to_gguf.py, conversion/)
# genai builder 0.18 int4 options (--extra_options), by label
GENAI_OPTIONS = {
    "default": [],
    "default, asymmetric": ["is_symmetric=false"],
    "rtn": ["algo_config=rtn"],
    "k_quant": ["algo_config=k_quant"],
    "k_quant_mixed": ["algo_config=k_quant_mixed"],
}


# -- worker: runs in an anchor's venv (numpy and the engine only) ---------------------------------

def _log_softmax_at(logits: np.ndarray, tok: int) -> float:
    x = logits.astype(np.float64)
    m = x.max()
    return float(x[tok] - m - np.log(np.exp(x - m).sum()))


def worker(job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    eos = job["eos"]
    if job["engine"] == "genai":
        import onnxruntime_genai as og

        models: dict = {}

        def model_for(task):
            if task not in models:
                models.clear()
                models[task] = og.Model(job["models"][task])
            return models[task]

        def forced(task, prompt, toks):
            m = model_for(task)
            params = og.GeneratorParams(m)
            params.set_search_options(max_length=len(prompt) + len(toks) + 1, do_sample=False)
            gen = og.Generator(m, params)
            gen.append_tokens(np.asarray([prompt], np.int32))
            out = [np.asarray(gen.get_logits()).reshape(-1)]
            for t in toks[:-1]:
                gen.append_tokens(np.asarray([[t]], np.int32))
                out.append(np.asarray(gen.get_logits()).reshape(-1))
            return out

        def greedy(task, prompt, n):
            m = model_for(task)
            params = og.GeneratorParams(m)
            params.set_search_options(max_length=len(prompt) + n, do_sample=False)
            gen = og.Generator(m, params)
            gen.append_tokens(np.asarray([prompt], np.int32))
            toks = []
            while not gen.is_done() and len(toks) < n:
                gen.generate_next_token()
                t = int(gen.get_next_tokens()[0])
                if t == eos:
                    break
                toks.append(t)
            return toks
    else:  # llama.cpp through llama_cpp's bindings on the library built beside llama-quantize
        import llama_cpp

        llms: dict = {}

        def model_for(task):
            if task not in llms:
                llms.clear()
                llms[task] = llama_cpp.Llama(model_path=job["models"][task], n_ctx=1024, n_batch=512,
                                             n_threads=job["threads"], n_threads_batch=job["threads"],
                                             logits_all=True, verbose=False)
            return llms[task]

        def forced(task, prompt, toks):
            llm = model_for(task)
            llm.reset()
            llm.eval(list(prompt) + list(toks[:-1]))
            return [np.asarray(llm.scores[len(prompt) - 1 + k]) for k in range(len(toks))]

        def greedy(task, prompt, n):
            llm = model_for(task)
            llm.reset()
            llm.eval(list(prompt))
            toks = []
            while len(toks) < n:
                t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                if t == eos:
                    break
                toks.append(t)
                llm.eval([t])
            return toks

    out = []
    for row in sorted(job["rows"], key=lambda r: r["task"]):  # one model loaded at a time
        sc = score_logits(forced(row["task"], row["prompt"], row["ref"]), row["ref"])
        g = same_path(sc, row["ref"], eos)
        out.append({"i": row["i"], **sc, "greedy": g if g is not None else greedy(row["task"], row["prompt"],
                                                                                   row["max_new"])})
    Path(job["result"]).write_text(json.dumps(sorted(out, key=lambda r: r["i"])))


def same_path(scores: dict, ref: list[int], eos: int) -> list[int] | None:
    """The model's own greedy answer when its argmax is the reference token at every forced
    position (greedy then walks the very same path: the reference without its eos); else None
    (the answer must be decoded)."""
    if scores["argmax"] != list(ref):
        return None
    return list(ref[:-1]) if ref and ref[-1] == eos else list(ref)


def score_logits(logits, ref: list[int]) -> dict:
    """Per answer position: the argmax, and the log-probability of the reference token."""
    return {"argmax": [int(np.argmax(x)) for x in logits],
            "logp": [round(_log_softmax_at(x, t), 5) for x, t in zip(logits, ref, strict=True)]}


# -- the driver (the project's venv) -----------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs/int4-anchors"))
    ap.add_argument("--ours", action="append", default=[], metavar="LABEL=GRAPH")
    ap.add_argument("--build", action="append", default=[], metavar="LABEL:FLAGS",
                    help="a multi-task int4 graph built here with these `alter-edge export` int4 flags")
    ap.add_argument("--genai", nargs="*", default=list(GENAI_OPTIONS), choices=list(GENAI_OPTIONS))
    ap.add_argument("--llama", nargs="*", default=["Q4_0", "Q4_K_M"])
    ap.add_argument("--no-fp32-anchors", action="store_true", help="skip the anchors' own fp32 / f32 models")
    ap.add_argument("--max-rows", type=int, default=None, help="dev rows per task (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return ap.parse_args()


def folder_mb(paths) -> float:
    return round(sum(p.stat().st_size for p in paths) / 1e6, 1)


def graph_files(graph: Path) -> list[Path]:
    """An ONNX graph and the external data files it names."""
    import onnx

    m = onnx.load(str(graph), load_external_data=False)
    names = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    return [graph, *(graph.parent / n for n in sorted(names))]


class Setup:
    """The checkpoint, its dev rows and the fp32 reference; built once, cached under ``out``."""

    def __init__(self, a):
        from alter_edge.export.pipeline import ExportOptions, _Export
        from alter_edge.training.checkpoint import load_checkpoint

        self.a, self.out = a, a.out
        self.ck = load_checkpoint(a.checkpoint)
        self.base_opts = ExportOptions(tasks=None, int4=True, threads=a.threads, heldout_rows=a.max_rows,
                                       progress=False)
        self.ex = _Export(self.ck, self.base_opts, {})

        class _Bar:
            def update(self):
                pass

        self.ex.bar = _Bar()
        self.rows = []  # (i, task, task id, kind, prompt, gold)
        for h in self.ex.heldout:
            for p, g in zip(h.prompts, h.golds, strict=True):
                self.rows.append({"i": len(self.rows), "task": h.task, "tid": h.task_id, "kind": h.kind,
                                  "prompt": list(map(int, p)), "gold": g, "max_new": self.ex.new_tokens[h.task]})

    def fp32_graph(self) -> Path:
        from alter_edge.export.builder import BuildSpec

        d = self.out / "fp32"
        g = d / "model.fp32.onnx"
        if not g.is_file():
            (_, g), = self.ex.build_all("fp32", d, [BuildSpec("multitask")], False)
        return g

    def reference(self) -> list[list[int]]:
        path = self.out / "reference.json"
        if path.is_file():
            ref = json.loads(path.read_text())
            if len(ref) == len(self.rows):
                return ref
        from alter_edge.export.validate import greedy

        runner = self.ex.runner(self.fp32_graph())
        ref = []
        for r in self.rows:
            toks = greedy(runner, [r["prompt"]], [r["tid"]], self.ck.pad_id, r["max_new"], self.ck.eos_id)[0]
            ref.append(toks + ([self.ck.eos_id] if len(toks) < r["max_new"] else []))
        path.write_text(json.dumps(ref))
        return ref


def score_ours(s: Setup, graph: Path, ref: list[list[int]], cache: Path) -> list[dict]:
    if cache.is_file():
        return json.loads(cache.read_text())
    from alter_edge.export.validate import forced_logits, greedy

    runner = s.ex.runner(graph)
    out = []
    for r, toks in zip(s.rows, ref, strict=True):
        sc = score_logits(list(forced_logits(runner, [r["prompt"]], [r["tid"]], s.ck.pad_id, [toks])[0]), toks)
        g = same_path(sc, toks, s.ck.eos_id)
        if g is None:
            g = greedy(runner, [r["prompt"]], [r["tid"]], s.ck.pad_id, r["max_new"], s.ck.eos_id)[0]
        out.append({"i": r["i"], **sc, "greedy": g})
    cache.write_text(json.dumps(out))
    return out


def build_ours(s: Setup, label: str, flags: str) -> Path:
    """A multi-task int4 graph with ``flags`` (the CLI's own option parsing), cached."""
    from alter_edge.export.builder import BuildSpec
    from alter_edge.testing import load_script

    variant_options = load_script(ROOT / "benchmarks" / "int4_variants.py", "bench_int4_variants").variant_options

    d = s.out / "ours" / slug(label)
    g = d / "model.int4.onnx"
    if g.is_file():
        return g
    opts = variant_options(s.base_opts, flags)
    s.ex.opts = opts
    plan = s.ex.quant_plan("int4")
    (_, g), = s.ex.build_all("int4", d, [BuildSpec("multitask")], True, plan)
    (d / "quantization.json").write_text(json.dumps(s.ex.info["quantization"].get("int4"), indent=1, default=str))
    s.ex.opts = s.base_opts
    return g


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-").lower()


def merged_folders(s: Setup) -> dict[str, Path]:
    """Per task: a Hugging Face folder of the base with the task's LoRA mixture merged (the
    export's fold, ``LoraKind.merged_weight``), checked against the MTA model's logits."""
    import torch

    from alter_edge.base_model import WEIGHT_SUFFIXES, load_base_model

    out = {}
    b = s.ex.builder
    spec = b.mta.spec
    src_dir = Path(s.ck.base_info.path)
    for t in s.ck.tasks:
        d = s.out / "hf" / t.name
        out[t.name] = d
        if (d / "config.json").is_file():
            continue
        model, _tok, _info = load_base_model(s.ck.base_info.path)
        layers = list(getattr(model.base_model, b.fam.layers))
        with torch.no_grad():
            for i, ad in b.adapters.items():
                mods = {b._attn_key(n): getattr(getattr(layers[i], spec.attn), n) for n in spec.attn_targets}
                mods.update({n: getattr(getattr(layers[i], spec.mlp), n) for n in spec.lora_targets})
                for pname, mod in mods.items():
                    if pname in ad.lora:
                        w = ad.merged_weight(pname, mod.weight.detach().numpy(), t.id)
                        mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, np.float32)))
            r = next(r for r in s.rows if r["task"] == t.name)
            ids = torch.tensor([r["prompt"]])
            want = s.ck.model(ids, torch.ones_like(ids), torch.tensor([t.id])).logits[0, -1]
            got = model(ids).logits[0, -1]
            diff = float((want - got).abs().max())
            if diff > 1e-3:
                raise SystemExit(f"merged {t.name}: logits differ from the MTA model's by {diff:.3g}")
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        for f in src_dir.iterdir():
            if f.is_file() and f.suffix not in WEIGHT_SUFFIXES and not (tmp / f.name).exists():
                shutil.copy(f, tmp / f.name)
        tmp.rename(d)
        print(f"merged {t.name}: max |logits diff| vs the MTA model {diff:.2e}", flush=True)
    return out


class AnchorError(RuntimeError):
    """An anchor's tool or runtime failed on a model: recorded in the table, the run goes on."""


def anchor_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OMP_WAIT"))}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def genai_models(s: Setup, hf: dict[str, Path], label: str, precision: str) -> dict[str, Path]:
    out = {}
    for task, src in hf.items():
        d = s.out / "genai" / slug(f"{precision}-{label}") / task
        out[task] = d
        if (d / "genai_config.json").is_file():
            continue
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [str(GENAI_PY), "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(tmp),
               "-p", precision, "-e", "cpu", "-c", str(s.out / "genai-cache")]
        if precision == "int4" and GENAI_OPTIONS[label]:
            cmd += ["--extra_options", *GENAI_OPTIONS[label]]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=anchor_env(), capture_output=True, text=True)
        if r.returncode:
            raise AnchorError(f"genai builder failed ({' '.join(cmd)}):\n{r.stderr[-3000:]}")
        cfg = json.loads((tmp / "genai_config.json").read_text())
        cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = s.a.threads
        (tmp / "genai_config.json").write_text(json.dumps(cfg, indent=2))
        tmp.rename(d)
        print(f"genai {precision} {label} {task}: built in {time.perf_counter() - t0:.0f}s", flush=True)
    return out


def genai_files(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.suffix in (".onnx", ".data") or p.name.endswith(".onnx.data")]


def gguf_models(s: Setup, hf: dict[str, Path], qtype: str) -> dict[str, Path]:
    out = {}
    for task, src in hf.items():
        d = s.out / "gguf"
        d.mkdir(parents=True, exist_ok=True)
        f32 = d / f"{task}.f32.gguf"
        if not f32.is_file():
            env = anchor_env()  # gguf is installed in the anchor venv (scripts/anchors.sh llama-quantize)
            cmd = [str(GENAI_PY), str(LLAMA_DIR / "py" / "convert_hf_to_gguf.py"), str(src), "--outtype", "f32",
                   "--outfile", str(f32) + ".tmp"]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode:
                raise AnchorError(f"convert_hf_to_gguf failed:\n{r.stderr[-3000:]}")
            Path(str(f32) + ".tmp").rename(f32)
        if qtype == "F32":
            out[task] = f32
            continue
        q = d / f"{task}.{qtype}.gguf"
        if not q.is_file():
            r = subprocess.run([str(LLAMA_DIR / "bin" / "llama-quantize"), str(f32), str(q) + ".tmp", qtype,
                                str(s.a.threads)], capture_output=True, text=True)
            if r.returncode:
                raise AnchorError(f"llama-quantize {qtype} failed:\n{r.stderr[-3000:]}")
            Path(str(q) + ".tmp").rename(q)
        out[task] = q
    return out


def score_anchor(s: Setup, engine: str, models: dict[str, Path], ref: list[list[int]], cache: Path) -> list[dict]:
    if cache.is_file():
        return json.loads(cache.read_text())
    job = {"engine": engine, "eos": s.ck.eos_id, "threads": s.a.threads, "result": str(cache) + ".tmp",
           "models": {t: str(p) for t, p in models.items()},
           "rows": [{"i": r["i"], "task": r["task"], "prompt": r["prompt"], "ref": toks, "max_new": r["max_new"]}
                    for r, toks in zip(s.rows, ref, strict=True)]}
    jp = cache.with_suffix(".job.json")
    jp.write_text(json.dumps(job))
    env = anchor_env()
    if engine == "llama":  # llama_cpp's bindings (in the anchor venv) load the libllama built beside llama-quantize
        env["LLAMA_CPP_LIB_PATH"] = str(LLAMA_DIR / "bin")
    r = subprocess.run([str(GENAI_PY), str(Path(__file__).resolve()), "x", "--worker", str(jp)], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise AnchorError(f"{engine} worker failed:\n{r.stderr[-3000:]}")
    Path(job["result"]).rename(cache)
    jp.unlink()
    return json.loads(cache.read_text())


def summarize(s: Setup, ref: list[list[int]], fp32: list[dict], got: list[dict]) -> dict:
    from alter_edge.export.validate import paired_interval
    from alter_edge.metrics import row_metric

    tok = s.ck.tokenizer
    agree = n = first = 0
    nll_q = nll_f = 0.0
    by_task: dict[str, dict] = {}
    for r, toks, f, g in zip(s.rows, ref, fp32, got, strict=True):
        hits = [int(a == t) for a, t in zip(g["argmax"], toks, strict=True)]
        agree, n, first = agree + sum(hits), n + len(hits), first + hits[0]
        nll_q -= sum(g["logp"])
        nll_f -= sum(f["logp"])
        fn = row_metric(r["kind"])
        pf = tok.decode(f["greedy"], skip_special_tokens=True).strip()
        pq = tok.decode(g["greedy"], skip_special_tokens=True).strip()
        t = by_task.setdefault(r["task"], {"fp32": [], "q": [], "changed": 0})
        t["fp32"].append(fn(pf, r["gold"]))
        t["q"].append(fn(pq, r["gold"]))
        t["changed"] += int(f["greedy"] != g["greedy"])
    tasks = {}
    for name, t in by_task.items():
        diff = (np.asarray(t["fp32"]) - np.asarray(t["q"])) * 100
        lo, hi = paired_interval(diff)
        tasks[name] = {"fp32": round(float(np.mean(t["fp32"])), 4), "score": round(float(np.mean(t["q"])), 4),
                       "drop_points": round(float(diff.mean()), 2), "interval95": [round(lo, 2), round(hi, 2)],
                       "changed_answers": t["changed"], "rows": len(diff)}
    return {"top1": round(agree / n, 4), "first_token_top1": round(first / len(s.rows), 4), "positions": n,
            "nll_increase": round((nll_q - nll_f) / n, 4),
            "mean_drop_points": round(float(np.mean([t["drop_points"] for t in tasks.values()])), 2),
            "max_drop_points": round(float(max(t["drop_points"] for t in tasks.values())), 2),
            "changed_answers": sum(t["changed_answers"] for t in tasks.values()), "tasks": tasks}


def main() -> None:
    a = parse_args()
    if a.worker is not None:
        worker(a.worker)
        return
    from alter_edge.testing import cpu_flags

    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "scores").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    s = Setup(a)
    ref = s.reference()
    ntasks = len(s.ck.tasks)
    fp32_graph = s.fp32_graph()
    fp32 = score_ours(s, fp32_graph, ref, a.out / "scores" / "ours-fp32.json")
    results = []

    def add(kind, label, scores, one_mb, all_mb, bits):
        row = {"kind": kind, "variant": label, "bits": bits, "model_mb": one_mb, "all_tasks_mb": all_mb,
               **summarize(s, ref, fp32, scores)}
        results.append(row)
        drops = ", ".join(f"{k} {v['drop_points']:+.1f}" for k, v in row["tasks"].items())
        print(f"{kind:<9} {label:<32} top1 {row['top1']:.4f} nll +{row['nll_increase']:.4f} "
              f"drops {drops} "
              f"{all_mb} MB", flush=True)

    def failed(kind, label, e):
        last = [ln for ln in str(e).splitlines() if ln.strip()][-1]
        results.append({"kind": kind, "variant": label, "error": last[:300]})
        print(f"{kind:<9} {label:<32} FAILED: {last[:300]}", flush=True)

    mb = folder_mb(graph_files(fp32_graph))
    add("ours", "fp32 (the reference)", fp32, mb, mb, "fp32")
    ours = [tuple(x.split("=", 1)) for x in a.ours]
    ours += [(label, build_ours(s, label, flags)) for label, _, flags in (b.partition(":") for b in a.build)]
    for label, graph in ours:
        graph = Path(graph)
        sc = score_ours(s, graph, ref, a.out / "scores" / f"ours-{slug(label)}.json")
        mb = folder_mb(graph_files(graph))
        add("ours", label, sc, mb, mb, "4 (multi-task graph)")
    need_hf = (a.genai and GENAI_PY.is_file()) or (a.llama and (LLAMA_DIR / "bin" / "llama-quantize").is_file())
    hf = merged_folders(s) if need_hf else {}
    if GENAI_PY.is_file():
        plan = ([("fp32", "fp32")] if not a.no_fp32_anchors else []) + [("int4", x) for x in a.genai]
        for precision, label in plan:
            name = f"{precision} {label}" if precision == "int4" else "fp32 (merged)"
            try:
                models = genai_models(s, hf, label, precision)
                sc = score_anchor(s, "genai", models, ref,
                                  a.out / "scores" / f"genai-{slug(precision + '-' + label)}.json")
            except AnchorError as e:
                failed("genai", name, e)
                continue
            sizes = [folder_mb(genai_files(d)) for d in models.values()]
            add("genai", name, sc, round(max(sizes), 1), round(sum(sizes), 1), precision)
    else:
        print("onnxruntime-genai: .venv-genai missing (bash scripts/anchors.sh genai); skipped")
    if (LLAMA_DIR / "bin" / "llama-quantize").is_file():
        for qtype in ([] if a.no_fp32_anchors else ["F32"]) + list(a.llama):
            try:
                models = gguf_models(s, hf, qtype)
                sc = score_anchor(s, "llama", models, ref, a.out / "scores" / f"llama-{slug(qtype)}.json")
            except AnchorError as e:
                failed("llama.cpp", qtype, e)
                continue
            sizes = [folder_mb([p]) for p in models.values()]
            add("llama.cpp", qtype if qtype != "F32" else "f32 (merged)", sc, round(max(sizes), 1),
                round(sum(sizes), 1), qtype)
    else:
        print("llama.cpp: .llama-quantize missing (bash scripts/anchors.sh llama-quantize); skipped")
    out = {"checkpoint": str(a.checkpoint), "machine": cpu_flags(), "rows": len(s.rows), "tasks": ntasks,
           "seconds": round(time.perf_counter() - t0, 1), "results": results}
    (a.out / "anchors.json").write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(out))


def markdown(out: dict) -> str:
    tasks = list(next(r for r in out["results"] if "tasks" in r)["tasks"])
    head = ("| engine | variant | one model MB | all tasks MB | answer top-1 | first-token top-1 | NLL increase | "
            + " | ".join(f"{t} drop" for t in tasks) + " | mean drop | changed answers |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in out["results"]:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['variant']} | " + " | ".join(["-"] * (len(tasks) + 6))
                         + f" | fails: {r['error'][:160].replace('|', '/')} |")
            continue
        cells = [f"{r['tasks'][t]['drop_points']:+.2f} [{r['tasks'][t]['interval95'][0]:+.1f}, "
                 f"{r['tasks'][t]['interval95'][1]:+.1f}]" for t in tasks]
        lines.append(f"| {r['kind']} | {r['variant']} | {r['model_mb']} | {r['all_tasks_mb']} | {r['top1']:.4f} | "
                     f"{r['first_token_top1']:.4f} | {r['nll_increase']:+.4f} | " + " | ".join(cells)
                     + f" | {r['mean_drop_points']:+.2f} | {r['changed_answers']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
