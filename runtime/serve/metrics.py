"""The server's Prometheus metrics (``/metrics``): one registry per server, the process's RSS and
CPU with it."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from .scheduler import SHUTDOWN, Job

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Prometheus metrics of one server (its own registry, the process's RSS and CPU with it)."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.queue = Gauge("alter_edge_queue_depth", "Requests waiting for a slot", registry=r)
        self.running = Gauge("alter_edge_running_rows", "Requests running: rows decoding in the batch and "
                             "the classify request being scored", registry=r)
        self.tps = Gauge("alter_edge_tokens_per_second", "Generated tokens per second over the last 5 s",
                         registry=r)
        self.tokens = Counter("alter_edge_generated_tokens", "Generated tokens", registry=r)
        self.requests = Counter("alter_edge_requests", "Finished requests by endpoint and finish reason",
                                ["endpoint", "reason"], registry=r)
        self.rejected = Counter("alter_edge_rejected_requests", "Requests answered 429 (queue full)", registry=r)
        self.ttft = Histogram("alter_edge_time_to_first_token_seconds", "Arrival to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("alter_edge_request_latency_seconds", "Arrival to last token or result",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.step_rows = Histogram("alter_edge_step_rows", "Rows that got a token, per decode step",
                                   buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self._window: deque[tuple[float, int]] = deque()

    def observe_step(self, queued: int, running: int, tokens: int) -> None:  # scheduler thread
        now = time.monotonic()
        self.queue.set(queued)
        self.running.set(running)
        if tokens:
            self.tokens.inc(tokens)
            self.step_rows.observe(tokens)
            self._window.append((now, tokens))
        while self._window and self._window[0][0] < now - 5.0:
            self._window.popleft()
        self.tps.set(sum(n for _, n in self._window) / 5.0)

    def first_token(self, job: Job, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, job: Job, reason: str, seconds: float) -> None:
        endpoint = job.sink.endpoint if job.sink is not None else "unknown"
        self.requests.labels(endpoint, reason).inc()
        if reason not in ("cancelled", SHUTDOWN):
            self.latency.labels(endpoint).observe(seconds)
