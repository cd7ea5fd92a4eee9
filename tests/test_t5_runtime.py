"""T5 (encoder-decoder) bundles in the torch-free runtime: continuous refill on the encoder-decoder
pair, EdgeModel's generate / stream / classify, the batch job, the server and refusals.

The pool's bookkeeping (refill, the self cache's holes and trimming, the cross cache's padding) is
first checked on a small exact stand-in for the pair (integer arithmetic in numpy, so a row's
logits are bit-equal however the batch around it looks); the rest runs tiny random T5 bundles
exported in-process."""

from __future__ import annotations

import numpy as np
import pytest

from alter_edge.runtime.contract import KVLayout, Seq2SeqLayout
from alter_edge.runtime.generate import SamplingParams
from alter_edge.runtime.seq2seq_decode import Seq2SeqPool, decode_seq2seq
from alter_edge.runtime.seq2seq_engine import Seq2SeqEngine
from alter_edge.testing import TINY_ROWS

EOS, PAD, START, V, D = 1, 0, 0, 13, 4


class ExactPair:
    """A stand-in for the encoder-decoder runner with the graph contract's shapes and masks: a
    row's logits depend on its unmasked prompt tokens, its task, its own earlier tokens (the
    self cache's unmasked entries), the token fed and its position (the count of its mask's ones),
    all in small integers held in float32 (exact)."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.emb = rng.integers(-3, 4, (V, D)).astype(np.float32)
        self.head = rng.integers(-3, 4, (V, D)).astype(np.float32)
        self.layout = Seq2SeqLayout(KVLayout(1, 1, D))
        self.encodes: list[int] = []  # rows per encoder run

    def encode(self, ids, mask, task_ids):
        self.encodes.append(len(ids))
        k = (self.emb[ids] * mask[:, :, None] + task_ids[:, None, None])[:, None]  # [b, 1, e, D]
        return [k * mask[:, None, :, None], 2 * k * mask[:, None, :, None]]

    def empty_past(self, batch):
        return [np.zeros((batch, 1, 0, D), np.float32)] * 2

    def step(self, ids, mask, enc_mask, cross, past, task_ids):
        b, seq = ids.shape
        P = past[0].shape[2]
        assert mask.shape == (b, P + seq) and enc_mask.shape[1] == cross[0].shape[2]
        new = self.emb[ids][:, None]  # [b, 1, seq, D]
        keys = np.concatenate([past[0], new], axis=2)
        context = (cross[0][:, 0] * enc_mask[:, :, None]).sum(1)  # [b, D]
        logits = np.zeros((b, seq, V), np.float32)
        for t in range(seq):
            upto = mask[:, :P + t + 1]
            own = (keys[:, 0, :P + t + 1] * upto[:, :, None]).sum(1)
            pos = upto.sum(1)[:, None]
            h = context + own + pos * self.emb[ids[:, t]] + task_ids[:, None]
            logits[:, t] = h @ self.head.T % 17
        return logits, [keys, 2 * keys]


def _alone(pair, prompts, tids, params):
    out = []
    for p, t, q in zip(prompts, tids, params, strict=True):
        out.append([tok for _, tok in decode_seq2seq(pair, START, [p], [t], EOS, PAD, [q])])
    return out


def _together(pair, prompts, tids, params, slots):
    out: list[list[int]] = [[] for _ in prompts]
    for i, tok in decode_seq2seq(pair, START, prompts, tids, EOS, PAD, params, slots=slots):
        out[i].append(tok)
    return out


EXACT_PROMPTS = [[3, 4, 5], [6], [7, 8, 9, 10, 11, 12], [2, 2], [9, 3, 4, 5], [12, 11], [4] * 9, [5, 6, 7]]


@pytest.mark.parametrize("slots", [1, 2, 3, None])
def test_pool_refill_equals_rows_alone_on_the_exact_pair(slots):
    pair = ExactPair()
    tids = [i % 3 for i in range(len(EXACT_PROMPTS))]
    params = [SamplingParams(max_new_tokens=1 + (5 * i) % 9, ignore_eos=i % 2 == 0) for i in range(len(tids))]
    alone = _alone(pair, EXACT_PROMPTS, tids, params)
    assert len({len(a) for a in alone}) > 3
    pair.encodes.clear()
    assert _together(pair, EXACT_PROMPTS, tids, params, slots) == alone
    if slots in (2, 3):
        assert 1 in pair.encodes[1:], "a refilled row ran the encoder for itself"


def test_pool_trims_the_self_cache_to_the_oldest_running_row():
    pair = ExactPair()
    pool = Seq2SeqPool(pair, EOS, PAD, START, 2)
    pool.add("first", [3, 4], 0, SamplingParams(max_new_tokens=8, ignore_eos=True))
    for _ in range(5):
        list(pool.step())
    pool.add("late", [5, 6, 7, 8], 1, SamplingParams(max_new_tokens=10, ignore_eos=True))
    widths, enc = [], []
    while pool.busy:
        list(pool.step())
        widths.append(pool.mask.shape[1])
        enc.append(pool.enc_mask.shape[1])
    # 3 more steps with both rows (the late row's holes), then only the late row's own positions
    assert widths == [6, 7, 8, 4, 5, 6, 7, 8, 9, 0]
    assert enc == [4] * 9 + [0] and pool.past[0].shape[2] == 0


def test_pool_cancel_and_sampling_streams():
    pair = ExactPair()
    q = SamplingParams(max_new_tokens=6, temperature=0.8, seed=3, ignore_eos=True)
    a = _together(pair, EXACT_PROMPTS[:4], [0, 1, 2, 0], [q] * 4, None)
    b = _together(pair, EXACT_PROMPTS[:4], [0, 1, 2, 0], [q] * 4, 1)
    assert a == b  # each row draws from its own seeded stream, whatever the batch
    done = np.zeros(2, dtype=bool)
    got = []
    for i, _tok in decode_seq2seq(pair, START, EXACT_PROMPTS[:2], [0, 1], EOS, PAD,
                                 SamplingParams(max_new_tokens=8, ignore_eos=True), done):
        got.append(i)
        if len(got) == 3:
            done[0] = True
    assert got.count(0) == 2 and got.count(1) == 8


def test_exact_pair_label_scores_equal_one_token_steps():
    pair = ExactPair()
    engine = Seq2SeqEngine(pair, START)
    labels = [[5, EOS], [7, 8, EOS], [EOS]]
    prompts, tids = EXACT_PROMPTS[:3], [0, 2, 1]
    got = engine.score_labels(prompts, tids, labels, PAD)
    from alter_edge.runtime.sampling import log_softmax
    for b, (p, t) in enumerate(zip(prompts, tids, strict=True)):
        for j, lab in enumerate(labels):
            cross = pair.encode(np.asarray([p]), np.ones((1, len(p)), np.int64), np.asarray([t]))
            past = [np.zeros((1, 1, 0, D), np.float32)] * 2
            total, fed = 0.0, [START, *lab[:-1]]
            for k, tok in enumerate(fed):
                logits, past = pair.step(np.asarray([[tok]]), np.ones((1, k + 1), np.int64),
                                         np.ones((1, len(p)), np.int64), cross, past, np.asarray([t]))
                total += log_softmax(logits[:, -1])[0, lab[k]]
            assert got[b, j] == pytest.approx(total, abs=1e-9)


# -- tiny random T5 bundles ------------------------------------------------------------------
def _write_t5_bundle(ckpt_dir, out, task_graphs=("echo",), atol=3e-4):
    """The exporter's validated fp32 encoder-decoder bundle of the checkpoint: the multi-task pair
    and a per-task pair for each of ``task_graphs``. ``atol``: the export's fp32 parity bound (the
    wide initial weights give logits in the hundreds, about 1e-6 of them apart from PyTorch's)."""
    from alter_edge.testing import build_bundle

    return build_bundle(ckpt_dir, out, task_graphs=tuple(task_graphs), atol=atol)


MAX_NEW = 10
MIXED = TINY_ROWS[:12]  # colour, echo, parity interleaved


def _t5_checkpoint(tmp_path_factory, tokenizer_dir, version: str, init_factor: float):
    """A T5 checkpoint with random adapters and mixtures; the wide initial weights make a random
    model's greedy answers differ from row to row (and some end at eos)."""
    from alter_edge.testing import make_tiny_checkpoint, make_tiny_t5

    base = make_tiny_t5(version, tmp_path_factory.mktemp("t5-base"), tokenizer_dir, init_factor=init_factor)
    return make_tiny_checkpoint(tmp_path_factory.mktemp("t5-ckpt") / "ckpt", base, kind="lora", init_std=0.3)


@pytest.fixture(scope="module")
def t5_ckpt_dir(tmp_path_factory, tiny_tokenizer_dir):
    return _t5_checkpoint(tmp_path_factory, tiny_tokenizer_dir, "1.0", 10.0)  # ReLU FFN, tied head


@pytest.fixture(scope="module")
def t5_ckpt(t5_ckpt_dir):
    from alter_edge.training.checkpoint import load_checkpoint

    return load_checkpoint(t5_ckpt_dir)


@pytest.fixture(scope="module")
def t5_bundle(tmp_path_factory, t5_ckpt_dir):
    return _write_t5_bundle(t5_ckpt_dir, tmp_path_factory.mktemp("t5-bundle") / "bundle", atol=5e-2)


@pytest.fixture(scope="module")
def t5_model(t5_bundle):
    from alter_edge.runtime import EdgeModel

    return EdgeModel.load(t5_bundle, threads=1)


def _ids(m, rows):
    return [m.encode(r["input"], r["task"])[0] for r in rows], [m.tasks.id_of(r["task"]) for r in rows]


def _assert_generate_equals_pytorch(m, ck):
    from alter_edge.training.evaluate import greedy_generate

    assert m.bundle.architecture == "encoder-decoder"
    prompts, tids = _ids(m, MIXED)
    ref = greedy_generate(ck.model, prompts, tids, ck.eos_id, ck.pad_id, MAX_NEW)
    got = m.generate([r["input"] for r in MIXED], tasks=[r["task"] for r in MIXED], max_new_tokens=MAX_NEW)
    assert [g.token_ids for g in got] == ref
    assert len({tuple(r) for r in ref}) > 3  # not vacuous: the rows differ
    for g, r in zip(got, ref, strict=True):
        assert g.finish_reason == ("length" if len(r) == MAX_NEW else "eos")
        assert g.text == m.tokenizer.decode(r, skip_special_tokens=True).strip()


def test_generate_equals_pytorch_greedy(t5_model, t5_ckpt):
    _assert_generate_equals_pytorch(t5_model, t5_ckpt)


def test_generate_equals_pytorch_greedy_t5_v11(tmp_path_factory, tiny_tokenizer_dir):
    """T5 v1.1 / flan: gated-GELU FFN, untied head."""
    from alter_edge.runtime import EdgeModel
    from alter_edge.training.checkpoint import load_checkpoint

    ckpt = _t5_checkpoint(tmp_path_factory, tiny_tokenizer_dir, "1.1", 3.0)
    bundle = _write_t5_bundle(ckpt, tmp_path_factory.mktemp("t5-v11") / "bundle", task_graphs=(), atol=5e-2)
    _assert_generate_equals_pytorch(EdgeModel.load(bundle, threads=1), load_checkpoint(ckpt))


@pytest.mark.parametrize("slots", [1, 2, 5])
def test_mixed_batch_with_refill_equals_rows_alone(t5_model, slots):
    m = t5_model
    prompts, tids = _ids(m, MIXED)
    engine = m.engine_for(["colour", "echo"])
    params = [SamplingParams(max_new_tokens=1 + (5 * i) % 11) for i in range(len(prompts))]
    eos, pad = m.bundle.eos_id, m.bundle.pad_id
    alone = [[t for _, t in engine.decode([p], [k], eos, pad, [q])] for p, k, q in zip(prompts, tids, params,
                                                                                       strict=True)]
    out: list[list[int]] = [[] for _ in prompts]
    for i, t in engine.decode(prompts, tids, eos, pad, params, slots=slots):
        out[i].append(t)
    assert out == alone and len({len(a) for a in alone}) > 3


def test_per_task_pair_and_sampling(t5_model, t5_bundle):
    from alter_edge.runtime import EdgeModel

    texts = [r["input"] for r in TINY_ROWS if r["task"] == "echo"][:4]
    own = EdgeModel.load(t5_bundle, threads=1, tasks=["echo"])  # the echo pair, no task_ids
    assert own.graph_for_request(["echo"]).path == "task-echo.decoder.fp32.onnx"
    assert [g.token_ids for g in own.generate(texts, task="echo", max_new_tokens=MAX_NEW)] == \
        [g.token_ids for g in t5_model.generate(texts, task="echo", max_new_tokens=MAX_NEW)]
    full = t5_model.generate(texts, task="echo", max_new_tokens=MAX_NEW)
    word = next(g.text.split()[1] for g in full if len(g.text.split()) > 1)
    cut = t5_model.generate(texts, task="echo", max_new_tokens=MAX_NEW, stop=word, batch_size=2)
    for f, c in zip(full, cut, strict=True):  # a stop string ends its row (the text ends before it)
        assert c.text.strip() == f.text.split(word)[0].strip()
        assert c.finish_reason == ("stop" if word in f.text else f.finish_reason)
    kw = {"task": "echo", "max_new_tokens": 8, "temperature": 0.9, "seed": 5}
    a = t5_model.generate(texts, **kw)
    b = t5_model.generate(texts, batch_size=1, **kw)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


@pytest.fixture(scope="module")
def t5_plain(tmp_path_factory, tiny_tokenizer_dir):
    """T5's default initial weights (the wide ones of the other tests make label scores of hundreds
    of nats, where fp32 rounding alone moves them by 1e-2, here and in PyTorch): (checkpoint,
    a bundle with fp32 and int8 pairs)."""
    from alter_edge.testing import build_bundle

    ckpt = _t5_checkpoint(tmp_path_factory, tiny_tokenizer_dir, "1.0", 1.0)
    return ckpt, build_bundle(ckpt, tmp_path_factory.mktemp("t5-plain") / "bundle", fp32=True, int8=True)


def test_int8_pair_refill_equals_rows_alone(t5_plain):
    from alter_edge.runtime import EdgeModel

    m = EdgeModel.load(t5_plain[1], threads=1)
    assert m.graph_for_request(["echo", "colour"]).path == "model.decoder.int8.onnx"
    assert not m.prefix_cache  # nothing to cache: off for an encoder-decoder
    texts, tasks = [r["input"] for r in MIXED], [r["task"] for r in MIXED]
    together = m.generate(texts, tasks=tasks, max_new_tokens=MAX_NEW, batch_size=3)
    alone = [m.generate(t, task=k, max_new_tokens=MAX_NEW) for t, k in zip(texts, tasks, strict=True)]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]


def test_classify_matches_pytorch_label_scores(t5_plain):
    from alter_edge.runtime import EdgeModel
    from alter_edge.training.checkpoint import load_checkpoint
    from alter_edge.training.evaluate import label_scores

    m = EdgeModel.load(t5_plain[1], threads=1, precision="fp32")
    t5_ckpt = load_checkpoint(t5_plain[0])
    rows = [r for r in TINY_ROWS if r["task"] == "colour"][:5]
    got = m.classify([r["input"] for r in rows], task="colour")
    labels = m.label_ids("colour")
    tid = m.tasks.id_of("colour")
    for r, c in zip(rows, got, strict=True):
        ref = label_scores(t5_ckpt.model, m.encode(r["input"], "colour")[0], tid, labels, t5_ckpt.pad_id)
        assert list(c.scores.values()) == pytest.approx(ref, abs=1e-4)
        assert c.label == m.tasks.get("colour").labels[int(np.argmax(ref))]


def test_stream_gives_the_generated_text(t5_model):
    texts = [r["input"] for r in MIXED[:4]]
    tasks = [r["task"] for r in MIXED[:4]]
    want = t5_model.generate(texts, tasks=tasks, max_new_tokens=MAX_NEW)
    parts: dict[int, list[str]] = {i: [] for i in range(4)}
    ends = {}
    for ev in t5_model.stream(texts, tasks=tasks, max_new_tokens=MAX_NEW, batch_size=2):
        parts[ev.row].append(ev.text)
        if ev.finish_reason:
            ends[ev.row] = ev.finish_reason
    assert ["".join(parts[i]).strip() for i in range(4)] == [g.text for g in want]
    assert [ends[i] for i in range(4)] == [g.finish_reason for g in want]


def test_batch_job_keeps_good_rows_and_reports_the_bad(t5_model, t5_bundle, tmp_path):
    import json

    from alter_edge.runtime.batch import BatchOptions, run_jsonl

    rows = [{"id": f"r{i}", "task": r["task"], "input": r["input"]} for i, r in enumerate(MIXED[:6])]
    lines = [json.dumps(r) for r in rows[:3]] + ['{"task": "nope", "input": "x"}', "not json"] + \
        [json.dumps(r) for r in rows[3:]]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    summary = run_jsonl(t5_model, src, dst, BatchOptions(batch_size=2, max_new_tokens=MAX_NEW), progress=False)
    assert (summary.rows, summary.ok, summary.failed) == (8, 6, 2)
    out = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [o.get("id") for o in out if "error" not in o] == [r["id"] for r in rows]
    by_id = {o["id"]: o for o in out if "error" not in o}
    for r in rows:
        spec = t5_model.tasks.get(r["task"])
        if spec.kind == "classify" and spec.labels:
            assert by_id[r["id"]]["output"] == t5_model.classify(r["input"], task=r["task"]).label
        else:
            assert by_id[r["id"]]["output"] == t5_model.generate(r["input"], task=r["task"],
                                                                 max_new_tokens=MAX_NEW).text
    assert sum("error" in o for o in out) == 2
    from click.testing import CliRunner

    from alter_edge.cli import main

    cli_out = tmp_path / "cli.jsonl"
    r = CliRunner().invoke(main, ["run", str(t5_bundle), "--input", str(src), "--output", str(cli_out),
                                  "--batch-size", "2", "--max-new-tokens", str(MAX_NEW), "--threads", "1"])
    assert r.exit_code == 3, r.output  # some rows failed
    assert cli_out.read_bytes() == dst.read_bytes()
    r = CliRunner().invoke(main, ["run", str(t5_bundle), "--task", "echo", "--generate", "--json", "--threads", "1",
                                  "--max-new-tokens", str(MAX_NEW), MIXED[2]["input"]])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["output"] == t5_model.generate(MIXED[2]["input"], task="echo",
                                                               max_new_tokens=MAX_NEW).text


def test_unknown_architecture_is_refused(t5_bundle, tmp_path):
    import json
    import shutil

    from alter_edge.errors import BundleError
    from alter_edge.runtime import EdgeModel

    bad = tmp_path / "bundle"
    shutil.copytree(t5_bundle, bad)
    man = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**man, "architecture": "state-space"}))
    with pytest.raises(BundleError, match=r"architecture 'state-space'.*serves: decoder.*encoder-decoder"):
        EdgeModel.load(bad)
    (bad / "manifest.json").write_text(json.dumps({**man, "graph_contract": "gqa-right-pad"}))
    with pytest.raises(BundleError, match=r"architecture 'encoder-decoder' with graph_contract 'gqa-right-pad'"):
        EdgeModel.load(bad)


def test_only_the_answer_counts_against_the_decoder_positions(t5_bundle, tmp_path):
    """kv_cache.max_sequence_length bounds T5's decoder positions: a prompt longer than it runs
    (it is in the encoder), new tokens past it are refused (a batch row; the server at start)."""
    import json
    import shutil

    from alter_edge.errors import ConfigError
    from alter_edge.runtime import EdgeModel
    from alter_edge.runtime.batch import BatchOptions, run_jsonl
    from alter_edge.runtime.serve.scheduler import Scheduler

    small = tmp_path / "bundle"
    shutil.copytree(t5_bundle, small)
    man = json.loads((small / "manifest.json").read_text())
    man["kv_cache"]["max_sequence_length"] = 8
    (small / "manifest.json").write_text(json.dumps(man))
    m = EdgeModel.load(small, threads=1)
    long_input = " ".join(["word"] * 12)
    assert len(m.encode(long_input, "echo")[0]) > 8  # the prompt alone is past the limit
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"id": "a", "task": "echo", "input": long_input}) + "\n")
    summary = run_jsonl(m, src, dst, BatchOptions(max_new_tokens=8), progress=False)
    assert (summary.ok, summary.failed) == (1, 0)
    run_jsonl(m, src, dst, BatchOptions(max_new_tokens=9), progress=False)
    err = json.loads(dst.read_text())["error"]
    assert "9 new tokens exceed the 8 decoder positions" in err and "prompt" not in err
    Scheduler(m, max_batch=2, max_tokens=8)  # the prompt does not count
    with pytest.raises(ConfigError, match=r"`max_tokens` 9 exceeds the 8 decoder positions.*at most 8"):
        Scheduler(m, max_batch=2, max_tokens=9)


def test_an_extra_task_the_pair_cannot_run_is_refused_at_load(t5_bundle, tmp_path):
    import json
    import shutil

    from alter_edge.errors import BundleError
    from alter_edge.io import sha256_file
    from alter_edge.runtime import EdgeModel

    b = tmp_path / "bundle"
    shutil.copytree(t5_bundle, b)
    tasks = json.loads((b / "tasks.json").read_text())
    tasks["tasks"].append({**tasks["tasks"][-1], "name": "extra", "id": len(tasks["tasks"])})
    (b / "tasks.json").write_text(json.dumps(tasks))
    man = json.loads((b / "manifest.json").read_text())
    man["files"]["tasks.json"] = sha256_file(b / "tasks.json")
    man["tasks"].append("extra")
    (b / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match=r"model\.decoder\.fp32\.onnx: the pair cannot run task ids 0\.\.3"):
        EdgeModel.load(b, threads=1)


def test_verify_bundle_opens_every_pair(t5_bundle):
    from alter_edge.runtime.model import verify_bundle

    manifest = verify_bundle(t5_bundle)
    assert manifest["architecture"] == "encoder-decoder" and manifest["graph_contract"] == "t5-mha"


def test_genai_engine_refuses_an_encoder_decoder_bundle(t5_bundle):
    from alter_edge.errors import BundleError, ConfigError
    from alter_edge.runtime import EdgeModel

    with pytest.raises(BundleError, match=r"encoder\.fp32\.onnx has no \.ort twin"):
        EdgeModel.load(t5_bundle, ort_format=True)
    with pytest.raises(ConfigError, match="encoder-decoder graph: it has no single-graph GraphRunner"):
        EdgeModel.load(t5_bundle, threads=1).runner_for(["echo"])
    with pytest.raises(ConfigError, match="engine 'genai' does not run encoder-decoder bundles"):
        EdgeModel.load(t5_bundle, engine="genai")


@pytest.mark.server
def test_server_answers_chat_completions_on_a_t5_bundle(t5_model, t5_bundle):
    """`alter-edge serve` on the T5 bundle: a chat request, a streamed one, a concurrent mixed-task
    burst (rows of three tasks in one batch) and /v1/classify each answer what the model answers
    alone."""
    import os
    import re
    import subprocess
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alter_edge.cli", "serve", str(t5_bundle), "--port", "0",
                             "--threads", "1", "--max-batch", "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        url = None
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "".join(lines)[-2000:]
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        row = MIXED[1]
        want = t5_model.generate(row["input"], task=row["task"], max_new_tokens=7)
        msgs = [{"role": "user", "content": row["input"]}]
        got = c.chat.completions.create(model=row["task"], messages=msgs, max_tokens=7)
        assert got.choices[0].message.content == want.text
        assert got.usage.completion_tokens == len(want.token_ids)
        chunks = list(c.chat.completions.create(model=row["task"], messages=msgs, max_tokens=7, stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want.text

        def ask(r):
            return c.completions.create(model=r["task"], prompt=r["input"], max_tokens=6).choices[0].text

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, MIXED[:6]))
        assert answers == [t5_model.generate(r["input"], task=r["task"], max_new_tokens=6).text for r in MIXED[:6]]
        httpx = pytest.importorskip("httpx")
        colour = [r["input"] for r in TINY_ROWS if r["task"] == "colour"][:3]
        got = httpx.post(url + "/v1/classify", json={"model": "colour", "input": colour}, timeout=60).json()
        want = t5_model.classify(colour, "colour")
        assert [d["label"] for d in got["data"]] == [c.label for c in want]
        for d, c in zip(got["data"], want, strict=True):
            assert d["scores"] == pytest.approx(c.scores, abs=1e-5)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.ray
def test_ray_job_on_a_t5_bundle_writes_the_local_jobs_bytes(t5_model, t5_bundle, tmp_path):
    import json

    pytest.importorskip("ray.data", reason="the Ray job needs the [ray] extra")
    import ray

    from alter_edge.runtime.batch import BatchOptions, run_jsonl
    from alter_edge.runtime.ray import RayOptions, run_file

    rows = [{"id": f"r{i}", "task": r["task"], "input": r["input"]} for i, r in enumerate(TINY_ROWS[:12])]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([json.dumps(r) for r in rows] + ['{"task": "nope", "input": "x"}']) + "\n")
    opts = BatchOptions(batch_size=3, max_new_tokens=6)
    local = tmp_path / "local.jsonl"
    assert run_jsonl(t5_model, src, local, opts, progress=False).failed == 1
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = tmp_path / "ray.jsonl"
        s = run_file(t5_bundle, src, out, opts, RayOptions(actors=2, threads_per_actor=1), progress=False)
    finally:
        ray.shutdown()
    assert out.read_bytes() == local.read_bytes() and (s.rows, s.failed) == (13, 1)


def test_t5_bundle_runs_without_torch(t5_model, t5_bundle, tmp_path):
    """A fresh interpreter with torch, transformers and onnx blocked loads the T5 bundle, generates
    a mixed-task batch and classifies: the runtime's encoder-decoder path is torch-free."""
    import json
    import subprocess
    import sys
    import textwrap

    blocker = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "safetensors", "onnx", "onnxscript"):
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
    """)
    texts, tasks = [r["input"] for r in MIXED[:4]], [r["task"] for r in MIXED[:4]]
    code = blocker + textwrap.dedent(f"""
        import json
        from alter_edge.runtime import EdgeModel
        m = EdgeModel.load({str(t5_bundle)!r}, threads=1)
        g = m.generate({texts!r}, tasks={tasks!r}, max_new_tokens=6)
        c = m.classify({texts[1]!r}, "colour")
        print(json.dumps({{"gen": [x.token_ids for x in g], "label": c.label}}))
    """)
    script = tmp_path / "script.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["gen"] == [x.token_ids for x in t5_model.generate(texts, tasks=tasks, max_new_tokens=6)]
    assert res["label"] == t5_model.classify(texts[1], "colour").label
