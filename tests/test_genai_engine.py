"""``EdgeModel.load(..., engine="genai")``: the bundle's graphs decoded by onnxruntime-genai's
generator give the runtime's own greedy tokens and text, per task and for rows of mixed tasks
(task_ids fed per row), through the same generate / stream / classify API; a missing package or
a bundle it cannot run is one clear error."""

from __future__ import annotations

import builtins
import shutil

import numpy as np
import pytest

from alter_edge.errors import BundleError, ConfigError
from alter_edge.runtime import EdgeModel
from alter_edge.runtime.generate import SamplingParams
from alter_edge.testing import TINY_ROWS

pytestmark = pytest.mark.genai

try:
    import onnxruntime_genai as og
except ImportError:
    og = None
needs_genai = pytest.mark.skipif(og is None, reason="onnxruntime-genai is not installed "
                                 "(pip install -e '.[genai]'; it has no wheel for Python 3.10)")

MIXED = [("echo", "swap cat dog"), ("parity", "count x"), ("colour", "is fish a colour"),
         ("parity", "count x x x x x x"), ("echo", "swap sun moon")]


@pytest.fixture(scope="module")
def genai_model(runtime_bundle):
    if og is None:
        pytest.skip("onnxruntime-genai is not installed")
    return EdgeModel.load(runtime_bundle, threads=1, engine="genai")


def _gen(model, **kw):
    tasks = [t for t, _ in MIXED]
    return model.generate([x for _, x in MIXED], tasks=tasks, max_new_tokens=8, **kw)


@needs_genai
def test_mixed_tasks_give_the_runtimes_greedy_tokens_and_text(genai_model, edge_model):
    got, want = _gen(genai_model), _gen(edge_model)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [(g.text, g.finish_reason, g.task) for g in got] == [(w.text, w.finish_reason, w.task) for w in want]
    assert any(len(g.token_ids) == 8 for g in got)  # not all rows ended at once
    assert not genai_model._runners  # generation opened no onnxruntime session of its own
    # one batch after the other: the same rows
    assert [g.token_ids for g in _gen(genai_model, batch_size=2)] == [w.token_ids for w in want]
    # a stop string ends the row in the text, as with the runtime's loop
    stop = want[0].text.split()[0] if want[0].text.split() else "cat"
    assert ([g.text for g in _gen(genai_model, stop=stop)] == [w.text for w in _gen(edge_model, stop=stop)])


@needs_genai
def test_each_task_and_its_own_graph(runtime_bundle, edge_model):
    own = EdgeModel.load(runtime_bundle, threads=1, tasks=["echo"], engine="genai")
    assert list(own._decoders) == ["task-echo.fp32.onnx"]  # the per-task graph (no task_ids input)
    ref = EdgeModel.load(runtime_bundle, threads=1, tasks=["echo"])
    texts = [r["input"] for r in TINY_ROWS if r["task"] == "echo"][:4]
    assert ([g.token_ids for g in own.generate(texts, task="echo", max_new_tokens=6)]
            == [g.token_ids for g in ref.generate(texts, task="echo", max_new_tokens=6)])
    events = list(own.stream(texts[0], task="echo", max_new_tokens=6))
    assert "".join(e.text for e in events) == ref.generate(texts[0], task="echo", max_new_tokens=6).text


@needs_genai
def test_classify_and_sampling(genai_model, edge_model):
    texts = [r["input"] for r in TINY_ROWS if r["task"] == "colour"][:3]
    assert [c.label for c in genai_model.classify(texts, task="colour")] == [
        c.label for c in edge_model.classify(texts, task="colour")]
    a = genai_model.generate(texts, task="colour", max_new_tokens=5, temperature=1.0, seed=3)
    b = genai_model.generate(texts, task="colour", max_new_tokens=5, temperature=1.0, seed=3)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]  # seeded: reproducible


@needs_genai
def test_bad_requests_and_bundles_are_clear_errors(genai_model, runtime_bundle, tmp_path):
    runner = genai_model._decoder(genai_model.bundle.graph_for(None))
    pad = genai_model.bundle.pad_id
    with pytest.raises(ConfigError, match="pad id"):
        list(runner.decode([[5, pad]], [0], genai_model.bundle.eos_id, pad, SamplingParams(max_new_tokens=2)))
    with pytest.raises(ConfigError, match="one SamplingParams"):
        list(runner.decode([[5], [6]], [0, 0], 1, pad, [SamplingParams(), SamplingParams(max_new_tokens=3)]))
    with pytest.raises(ConfigError, match="exceed"):
        genai_model.generate("swap cat dog", task="echo", max_new_tokens=100_000)
    broken = tmp_path / "b"
    shutil.copytree(runtime_bundle, broken)
    (broken / "genai_config.json").unlink()
    with pytest.raises(BundleError):  # the manifest lists it: a bundle check fails first
        EdgeModel.load(broken, threads=1, engine="genai")
    with pytest.raises(BundleError, match="genai_config.json"):
        EdgeModel.load(broken, threads=1, engine="genai", verify=False)
    with pytest.raises(ConfigError, match="engine 'gpu' is not one of"):
        EdgeModel.load(runtime_bundle, engine="gpu")


def test_a_missing_onnxruntime_genai_is_a_clear_error(runtime_bundle, monkeypatch):
    real_import = builtins.__import__

    def no_genai(name, *args, **kw):
        if name == "onnxruntime_genai":
            raise ImportError("No module named 'onnxruntime_genai'")
        return real_import(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", no_genai)
    with pytest.raises(ConfigError, match=r"pip install 'alter-edge\[genai\]'"):
        EdgeModel.load(runtime_bundle, threads=1, engine="genai")


def test_decode_ids_keeps_per_task_groups_in_step_with_done(edge_model, runtime_bundle):
    """A done flag the caller sets between tokens ends that row."""
    own = EdgeModel.load(runtime_bundle, threads=1, tasks=["echo"])
    specs = [own.tasks.get("echo")] * 2
    prompts = [own.prompt_ids("swap cat dog", "echo")[0]] * 2
    done = np.zeros(2, dtype=bool)
    seen = []
    for row, _tok in own.decode_ids(prompts, specs, SamplingParams(max_new_tokens=4, ignore_eos=True), done):
        seen.append(row)
        done[0] = True
    assert seen.count(0) == 1 and seen.count(1) == 4


@needs_genai
def test_quantized_graphs_give_the_runtimes_greedy_tokens(tmp_path_factory, runtime_ckpt_dir):
    """int8 and int4 (MatMulNBits) multi-task graphs, mixed tasks per row."""
    from alter_edge.testing import build_bundle

    b = build_bundle(runtime_ckpt_dir, tmp_path_factory.mktemp("genai-engine-q") / "bundle", int8=True, int4=True,
                     int8_budget=100.0, int4_budget=100.0, min_top1_int8=0.0, min_top1_int4=0.0)
    for precision in ("int8", "int4"):
        ours = EdgeModel.load(b, threads=1, precision=precision)
        genai = EdgeModel.load(b, threads=1, precision=precision, engine="genai")
        assert list(genai._decoders) == [f"model.{precision}.onnx"]
        assert [g.token_ids for g in _gen(genai)] == [g.token_ids for g in _gen(ours)], precision


@needs_genai
def test_decode_arguments_are_checked_once_for_both_engines(genai_model, edge_model):
    """Issue 36 item 12: the genai engine gave a pybind RuntimeError where the default engine
    answers. Both engines run the same argument check (``generate.decode_args``) and the same
    SamplingParams: a seed past 2**63-1 is a ConfigError naming seed for both, a top_k past the
    vocabulary keeps every token for both, and a seed past the generator's 31 bits still runs."""
    for m in (edge_model, genai_model):
        for kw, field in ((dict(seed=2**200), "seed"), (dict(seed=-1), "seed"), (dict(top_k=-1), "top_k"),
                          (dict(top_k=1.5), "top_k"), (dict(temperature=float("nan")), "temperature")):
            with pytest.raises(ConfigError, match=field) as e:
                m.generate("swap cat dog", task="echo", max_new_tokens=3, **{"temperature": 1.0, **kw})
            assert "\n" not in str(e.value) and len(str(e.value)) < 200, m.engine
        wide = m.generate("swap cat dog", task="echo", max_new_tokens=3, temperature=1.0, top_k=10**12, seed=7)
        all_k = m.generate("swap cat dog", task="echo", max_new_tokens=3, temperature=1.0, top_k=0, seed=7)
        assert wide.token_ids == all_k.token_ids, m.engine  # k over the vocabulary: every token
        big = [m.generate("swap cat dog", task="echo", max_new_tokens=3, temperature=1.0, seed=2**63 - 1).token_ids
               for _ in range(2)]
        assert big[0] == big[1], m.engine  # reproducible
    # the runners' own arguments: the same messages from both decode loops
    from alter_edge.runtime.generate import decode

    runner = edge_model._runner(edge_model.bundle.graph_for(None))
    grunner = genai_model._decoder(genai_model.bundle.graph_for(None))
    eos, pad = edge_model.bundle.eos_id, edge_model.bundle.pad_id
    bad = [dict(prompts=[[5], []], task_ids=[0, 0], params=SamplingParams(2)),
           dict(prompts=[[5]], task_ids=[0, 1], params=SamplingParams(2)),
           dict(prompts=[[5]], task_ids=[0], params=SamplingParams(2), slots=0),
           dict(prompts=[[5]], task_ids=[0], params=SamplingParams(2), slots=True),
           dict(prompts=[[5]], task_ids=[0], params="greedy")]
    for kw in bad:
        with pytest.raises(ConfigError) as a:
            list(decode(runner, eos_id=eos, pad_id=pad, **kw))
        with pytest.raises(ConfigError) as b:
            list(grunner.decode(eos_id=eos, pad_id=pad, **kw))
        assert str(a.value) == str(b.value), kw
