"""alter-edge serve: the real openai client against a server in a subprocess (a free port, the
tiny random bundle): completions, chat, streaming, a mixed-task concurrent burst whose rows
equal their own runs, 429s, disconnects, bad input, the API key and SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from alter_edge.runtime.generate import SamplingParams, SlotPool  # noqa: E402
from alter_edge.testing import TINY_ROWS  # noqa: E402

pytestmark = pytest.mark.server

READY = re.compile(r"listening on (http://\S+)")
LONG = 1500  # max_tokens of a request meant to outlive what the test does to it


class Server:
    def __init__(self, bundle, *args: str, key: str | None = None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "alter_edge.cli", "serve", str(bundle), "--port", "0",
                                      "--threads", "1", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        self.url = None
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"the server exited ({self.proc.wait()}): {''.join(self.lines)[-2000:]}")
            self.lines.append(line)
            m = READY.search(line)
            if m:
                self.url = m.group(1)
            assert time.monotonic() < deadline, "no ready line in 120 s"
        threading.Thread(target=self._drain, daemon=True).start()
        self.key = key

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key or "unused", max_retries=0, **kw)

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", headers=self.headers()).text
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert m, f"{name} not in /metrics"
        return float(m.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(runtime_bundle):
    s = Server(runtime_bundle, "--max-batch", "4", "--max-queue", "32", "--max-tokens", str(LONG),
               "--max-body-bytes", "65536")
    yield s
    s.stop()


def _rows(n: int) -> list[dict]:
    """Mixed tasks, each with its own length and sampling (some seeded sampling)."""
    out = []
    for i, r in enumerate(TINY_ROWS[:n]):
        sample = i % 4 == 3
        out.append({"task": r["task"], "text": r["input"], "max_tokens": 2 + (5 * i) % 13,
                    "temperature": 0.8 if sample else 0.0, "seed": 100 + i if sample else None})
    return out


def _alone(m, row) -> tuple[str, list[int]]:
    g = m.generate(row["text"], task=row["task"], max_new_tokens=row["max_tokens"],
                   temperature=row["temperature"], seed=row["seed"])
    return g.text, g.token_ids


@pytest.mark.parametrize("prefill_tokens", [None, 2])  # the server's interleaved prefill, in small chunks
def test_slot_pool_rows_added_while_it_runs_equal_their_own_runs(edge_model, prefill_tokens):
    m = edge_model
    runner = m.runner_for(m.tasks.names)
    rows = [(m.encode(r["input"], r["task"])[0], m.tasks.id_of(r["task"]), SamplingParams(1 + (3 * i) % 9))
            for i, r in enumerate(TINY_ROWS[:10])]

    def run(items, size, late_every=0):
        pool = SlotPool(runner, m.bundle.eos_id, m.bundle.pad_id, size, 64, prefill_tokens=prefill_tokens)
        out: dict[int, list] = {i: [] for i in range(len(items))}
        pending = list(enumerate(items))
        steps = 0
        while pending or pool.busy:
            if pending and (not late_every or steps % late_every == 0):  # one row joins every few steps
                i, (p, t, q) = pending.pop(0)
                pool.add(i, p, t, q)
            for key, tok in pool.step():
                if tok is not None:
                    out[key].append(tok)
            steps += 1
        return [out[i] for i in range(len(items))]

    alone = [run([row], 1)[0] for row in rows]
    assert len({len(a) for a in alone}) > 3
    assert run(rows, 3, late_every=2) == alone
    assert run(rows, 4, late_every=1) == alone


def test_models_completions_and_usage(server, edge_model):
    c = server.client()
    assert [x.id for x in c.models.list().data] == list(edge_model.tasks.names)
    text = "repeat cat dog"
    want = edge_model.generate(text, task="echo", max_new_tokens=9)
    got = c.completions.create(model="echo", prompt=text, max_tokens=9)
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    prompt_ids, _ = edge_model.prompt_ids(text, "echo")
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(prompt_ids), len(want.token_ids))
    assert got.usage.total_tokens == len(prompt_ids) + len(want.token_ids)
    assert got.model == "echo" and got.object == "text_completion"
    # a stop string: the text ends before it, as EdgeModel's does
    words = want.text.split()
    stop = words[len(words) // 2]
    cut = edge_model.generate(text, task="echo", max_new_tokens=9, stop=stop)
    assert cut.finish_reason == "stop" and len(cut.text) < len(want.text)
    got = c.completions.create(model="echo", prompt=text, max_tokens=9, stop=[stop])
    assert (got.choices[0].text, got.choices[0].finish_reason) == (cut.text, "stop")
    assert got.usage.completion_tokens == len(cut.token_ids)


def test_chat_and_streaming(server, edge_model):
    c = server.client()
    text = "repeat red blue"
    want = edge_model.generate(text, task="echo", max_new_tokens=7)
    msgs = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "x"}, {"role": "user", "content": text}]
    got = c.chat.completions.create(model="echo", messages=msgs, max_tokens=7)
    assert got.choices[0].message.content == want.text and got.choices[0].message.role == "assistant"
    assert got.usage.completion_tokens == len(want.token_ids)

    chunks = list(c.chat.completions.create(model="echo", messages=msgs, max_tokens=7, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want.text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].usage.completion_tokens == len(want.token_ids) and chunks[-1].choices == []

    pieces = list(c.completions.create(model="echo", prompt=text, max_tokens=7, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == want.text
    # the wire: SSE events, the last one data: [DONE]
    with httpx.stream("POST", server.url + "/v1/completions",
                      json={"model": "echo", "prompt": text, "max_tokens": 3, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_mixed_task_burst_rows_equal_their_own_runs(server, edge_model):
    """16 concurrent requests of three tasks on a 4-slot batch (greedy and seeded sampling),
    and classify requests among them: each answer is the one its request gets alone."""
    rows = _rows(16)
    want = [_alone(edge_model, r) for r in rows]
    colour = [r["input"] for r in TINY_ROWS if r["task"] == "colour"][:3]
    want_cls = edge_model.classify(colour, "colour")
    before = server.metric("alter_edge_step_rows_count"), server.metric("alter_edge_step_rows_sum")
    c = server.client()

    def one(r):
        got = c.completions.create(model=r["task"], prompt=r["text"], max_tokens=r["max_tokens"],
                                   temperature=r["temperature"], seed=r["seed"])
        return got.choices[0].text, got.usage.completion_tokens

    def cls():
        return httpx.post(server.url + "/v1/classify", json={"model": "colour", "input": colour}).json()

    with ThreadPoolExecutor(16) as pool:
        futs = [pool.submit(one, r) for r in rows]
        fc = pool.submit(cls)
        got = [f.result() for f in futs]
        got_cls = fc.result()
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[1] for g in got] == [len(w[1]) for w in want]
    assert [d["label"] for d in got_cls["data"]] == [x.label for x in want_cls]
    for d, x in zip(got_cls["data"], want_cls, strict=True):
        assert d["scores"] == pytest.approx(x.scores, abs=1e-5)
    steps = server.metric("alter_edge_step_rows_count") - before[0]
    rows_fed = server.metric("alter_edge_step_rows_sum") - before[1]
    assert rows_fed / steps > 1.5, "requests shared decode steps"
    assert server.metric("alter_edge_running_rows") == 0 and server.metric("alter_edge_queue_depth") == 0


def test_bad_input_names_the_field(server):
    c = server.client()
    cases = [
        (dict(model="nope", prompt="x"), "model", "model_not_found"),
        (dict(model="echo", prompt="x", max_tokens=LONG + 1), "max_tokens", "invalid_value"),
        (dict(model="echo", prompt="x", extra_body={"n": 2}), "n", "invalid_value"),
        (dict(model="echo", prompt="x", temperature=-1), "temperature", "invalid_value"),
        (dict(model="echo", prompt="x", extra_body={"max_tokens": "3"}), "max_tokens", "invalid_type"),
        (dict(model="echo", prompt="x", extra_body={"stream": "yes"}), "stream", "invalid_type"),
        (dict(model="echo", prompt="   "), "prompt", "invalid_value"),
        (dict(model="echo", prompt="repeat cat " * 300), "prompt", "context_length_exceeded"),
    ]
    for kw, param, code in cases:
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(**kw)
            pytest.fail(f"{str(kw)[:200]} was accepted")
        err = e.value.body
        assert (err.get("param"), err.get("code")) == (param, code), (kw, err)
        assert e.value.status_code == 400 and err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="echo", messages=[{"role": "system", "content": "x"}])
    assert e.value.body["param"] == "messages"
    # an over-long input is cut when the request asks for it
    got = c.completions.create(model="echo", prompt="repeat " * 400, max_tokens=2, extra_body={"truncate": True})
    assert got.usage.prompt_tokens <= 256
    # raw: bad JSON, a non-object, an over-large body, an unknown path
    r = httpx.post(server.url + "/v1/completions", content=b"{bad")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(server.url + "/v1/chat/completions", json=[1, 2])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "' + b"a" * 70000 + b'"}')
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/classify", json={"model": "echo", "input": "x"})
    assert r.status_code == 400 and "no label set" in r.json()["error"]["message"]


def test_disconnect_frees_the_slot(server):
    tokens0 = server.metric("alter_edge_generated_tokens_total")
    body = {"model": "echo", "prompt": "repeat cat", "max_tokens": LONG, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body) as r:
        it = (line for line in r.iter_lines() if line)
        for _ in range(3):
            assert next(it).startswith("data: ")
    t0 = time.monotonic()  # the connection is closed: the slot must go before LONG tokens are made
    while server.metric("alter_edge_running_rows") != 0:
        assert time.monotonic() - t0 < 10, "the slot was not freed"
        time.sleep(0.02)
    made = server.metric("alter_edge_generated_tokens_total") - tokens0
    assert made < LONG / 2, f"{made} tokens made for a client that left after 3"
    # a non-streamed request whose client gives up (timeout) is dropped as well
    tokens0 = server.metric("alter_edge_generated_tokens_total")
    c = server.client(timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        c.completions.create(model="echo", prompt="repeat dog", max_tokens=LONG, extra_body={"ignore_eos": True})
    t0 = time.monotonic()
    while server.metric("alter_edge_running_rows") != 0:
        assert time.monotonic() - t0 < 10, "the slot was not freed"
        time.sleep(0.02)
    assert server.metric("alter_edge_generated_tokens_total") - tokens0 < LONG


def test_non_loopback_needs_a_key(runtime_bundle):
    r = subprocess.run([sys.executable, "-m", "alter_edge.cli", "serve", str(runtime_bundle), "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--api-key-file" in r.stderr and "--insecure" in r.stderr


def test_key_429_and_sigterm_drain(runtime_bundle, tmp_path):
    """One slot, one queue place, an API key: a burst gets 429s with Retry-After; SIGTERM lets
    the running stream finish, refuses new connections and exits 0."""
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    key_file.chmod(0o600)
    s = Server(runtime_bundle, "--max-batch", "1", "--max-queue", "1", "--max-tokens", str(LONG),
               "--api-key-file", str(key_file), "--grace", "30", key="s3cret-key")
    try:
        r = httpx.get(s.url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer s3cret-kez"})
        assert r.status_code == 401
        assert httpx.get(s.url + "/health").status_code == 200
        c = s.client()

        def one(_):
            try:
                got = c.completions.create(model="echo", prompt="repeat cat", max_tokens=300,
                                           extra_body={"ignore_eos": True})
                return got.usage.completion_tokens
            except openai.RateLimitError as e:
                return e.response.headers.get("retry-after")

        with ThreadPoolExecutor(6) as pool:
            out = list(pool.map(one, range(6)))
        done = [x for x in out if isinstance(x, int)]
        rejected = [x for x in out if not isinstance(x, int)]
        assert done and all(x == 300 for x in done)
        assert rejected and all(x is not None and int(x) >= 1 for x in rejected)
        assert s.metric("alter_edge_rejected_requests_total") == len(rejected)
        assert s.metric("alter_edge_queue_depth") == 0

        body = {"model": "echo", "prompt": "repeat cat", "max_tokens": LONG, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, headers=s.headers(), timeout=60) as r:
            it = (line for line in r.iter_lines() if line)
            assert next(it).startswith("data: ")
            s.proc.send_signal(signal.SIGTERM)
            rest = [line for line in it if line]
        assert rest[-1] == "data: [DONE]"
        pieces = [json.loads(x[6:]) for x in rest[:-1]]
        assert pieces[-1]["choices"][0]["finish_reason"] == "length"  # every token came
        assert s.proc.wait(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(s.url + "/health")
    finally:
        s.stop()


def test_rows_in_the_pool_free_their_cache_rows(edge_model):
    """The pool's bookkeeping is per slot: after many rows it holds nothing of them."""
    m = edge_model
    runner = m.runner_for(m.tasks.names)
    pool = SlotPool(runner, m.bundle.eos_id, m.bundle.pad_id, 2, 32)
    p = m.encode("repeat cat", "echo")[0]
    for i in range(20):
        pool.add(("req", i), p, m.tasks.id_of("echo"), SamplingParams(3))
        if i % 3 == 0:
            pool.cancel(("req", i))
    seen = set()
    while pool.busy:
        seen.update(k for k, _ in pool.step())
    assert not {("req", i) for i in range(0, 20, 3)} & seen and len(seen) == 13
    assert pool.running == 0 and not pool.waiting and not pool.slot_of
    assert np.all(pool.lengths == 1)


def test_scheduler_deadlines_and_stop(edge_model):
    """In-process: a queued request past its deadline never runs; a running one leaves the
    batch at its deadline; stopping finishes whatever is left with 'shutdown'."""
    from alter_edge.runtime.serve.scheduler import DEADLINE, SHUTDOWN, Job, Overloaded, Scheduler

    m = edge_model
    got: dict[int, list] = {}

    def deliver(job, events):
        got.setdefault(id(job), []).extend(events)

    sched = Scheduler(m, max_batch=1, max_queue=4, max_tokens=LONG)
    prompt = m.encode("repeat cat", "echo")[0]
    tid = m.tasks.id_of("echo")
    params = SamplingParams(LONG, ignore_eos=True)
    now = time.monotonic()
    running = Job("echo", tid, deliver, now + 0.3, prompt=prompt, params=params)
    expired = Job("echo", tid, deliver, now - 1, prompt=prompt, params=params)
    held = Job("echo", tid, deliver, now + 600, prompt=prompt, params=params)
    for j in (running, expired, held):
        sched.submit(j)
    sched.start()
    try:
        deadline = time.monotonic() + 30
        while not (got.get(id(running)) and got[id(running)][-1].finish_reason):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert got[id(running)][-1].finish_reason == DEADLINE
        assert 0 < running.tokens < LONG
        assert [e.finish_reason for e in got[id(expired)]] == [DEADLINE] and expired.tokens == 0
    finally:
        sched.stop()
    assert got[id(held)][-1].finish_reason in (SHUTDOWN, "length")
    with pytest.raises(Overloaded) as e:
        sched.submit(Job("echo", tid, deliver, now + 600, prompt=prompt, params=params))
    assert e.value.closed
