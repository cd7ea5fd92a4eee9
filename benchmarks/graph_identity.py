"""The real SmolLM2-135M graphs, fingerprinted: proves a builder change leaves them as they were.

A fixed random-adapter checkpoint (lora on the MLP and attention of the top 2 blocks, seed 0)
over the built-in SmolLM2-135M is built at fp32, int8 and int4: the multi-task graph, the
per-task graph of 'echo' and its merged graph, and the plain base (no adapters). Each graph's
greedy tokens (8 steps, eos ignored) on a mixed-task batch of prompts and the sha256 of its
proto and of each weight file are written as JSON; run it before and after a change and compare:

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/graph_identity.py --work runs/identity \\
        --out before.json
    ... change the builder ...
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/graph_identity.py --work runs/identity \\
        --out after.json --compare before.json

``--base`` takes another base (a folder): a tiny model makes a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

PROMPTS = [("echo", "swap cat dog"), ("parity", "count x x x"), ("colour", "is the sun a colour"),
           ("echo", "swap red moon tree")]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fingerprint(base: str, work: Path, new_tokens: int = 8) -> dict:
    import torch

    from alter_edge.base_model import load_tokenizer, resolve_base_model
    from alter_edge.export.builder import BuildSpec, DecoderBuilder
    from alter_edge.export.graph import WeightFile
    from alter_edge.runtime.generate import SamplingParams, decode
    from alter_edge.runtime.session import GraphRunner, session_options
    from alter_edge.testing import make_tiny_checkpoint
    from alter_edge.training.checkpoint import load_checkpoint

    torch.manual_seed(0)
    base_dir = resolve_base_model(base)
    ckpt = work / "ckpt"
    if not (ckpt / "state.json").is_file():
        make_tiny_checkpoint(ckpt, base_dir, kind="lora+attn", init_std=0.02, seed=0)
    ck = load_checkpoint(ckpt)
    tok = load_tokenizer(base_dir)
    prompts, tids = [], []
    for task, text in PROMPTS:
        spec = ck.tasks.get(task)
        prompts.append(tok.encode(spec.prompt_template.format(input=text), add_special_tokens=False).ids)
        tids.append(spec.id)
    echo = ck.tasks.get("echo").id
    from alter_edge.base_model import load_base_model

    builders = {"mta": DecoderBuilder(ck.model), "plain": DecoderBuilder(load_base_model(str(base_dir))[0])}
    out: dict = {"graphs": {}, "weights": {}}
    opts = session_options(1)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for precision in ("fp32", "int8", "int4"):
            wf = WeightFile(Path(tmp) / f"weights.{precision}.bin")
            plan = [("mta", "multitask", BuildSpec("multitask")), ("mta", "task-echo", BuildSpec("task", echo)),
                    ("mta", "merged-echo", BuildSpec("merged", echo)), ("plain", "plain", BuildSpec("task"))]
            built = []
            for which, name, spec in plan:
                path = Path(tmp) / f"{name}.{precision}.onnx"
                own = WeightFile(Path(tmp) / f"{name}.{precision}.bin") if spec.mode == "merged" or which == "plain" \
                    else wf
                facts = builders[which].build(path, spec, precision, own)
                if own is not wf:
                    own.close()
                    out["weights"][own.path.name] = _sha(own.path)
                built.append((name, spec, path, facts))
            wf.close()
            out["weights"][wf.path.name] = _sha(wf.path)
            for name, spec, path, facts in built:
                runner = GraphRunner(path, builders["mta"].kv, opts, ["CPUExecutionProvider"])
                rows = list(range(len(prompts))) if spec.mode == "multitask" else \
                    [i for i, t in enumerate(tids) if t == echo or name == "plain"]
                toks: list[list[int]] = [[] for _ in rows]
                for r, t in decode(runner, [prompts[i] for i in rows], [tids[i] for i in rows], -1, ck.pad_id,
                                   SamplingParams(max_new_tokens=new_tokens)):
                    toks[r].append(int(t))
                out["graphs"][f"{name}.{precision}"] = {"sha256": facts["sha256"], "nodes": facts["nodes"],
                                                        "tokens": toks}
                print(f"{name}.{precision}: {facts['nodes']} nodes, sha256 {facts['sha256'][:16]}, tokens {toks}",
                      flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--work", type=Path, default=Path("runs/graph-identity"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compare", type=Path, default=None, help="an earlier run's JSON: exit 1 unless tokens match")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    res = fingerprint(args.base, args.work)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    if args.compare is None:
        return
    old = json.loads(args.compare.read_text())
    tokens_same = all(old["graphs"][k]["tokens"] == v["tokens"] for k, v in res["graphs"].items())
    shas = sum(old["graphs"][k]["sha256"] == v["sha256"] for k, v in res["graphs"].items())
    weights = sum(old["weights"].get(k) == v for k, v in res["weights"].items())
    print(f"greedy tokens identical: {tokens_same}; graph protos identical: {shas}/{len(res['graphs'])}; "
          f"weight files identical: {weights}/{len(res['weights'])}")
    sys.exit(0 if tokens_same else 1)


if __name__ == "__main__":
    main()
