"""Prometheus metrics of a replica (``foresight_replica_*``, seconds, ``_total`` counters).

Counters and histograms are fed by the engine's listener hooks; gauges are refreshed from the engine at
scrape time. Prefix-cache effectiveness: ``foresight_replica_prefix_hit_tokens_total`` over
``foresight_replica_prompt_tokens_total`` (both counted once per request, at its first admission; hits include
blocks loaded back from the host tier, whose traffic ``kv_offloaded_blocks``/``kv_loaded_blocks`` count).
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from replicas.engine.engine import Engine, StepStats
from replicas.engine.request import Request

_GEN_RATE_WINDOW_S = 10.0  # generation_tokens_per_second averages over this window
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)
_LAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ReplicaMetrics:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.registry = r = CollectorRegistry()
        p = "foresight_replica_"
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.prefix_hit_tokens = Counter(p + "prefix_hit_tokens", "Prompt tokens served from the prefix cache",
                                         registry=r)
        self.prefill_tokens = Counter(p + "prefill_tokens", "Tokens computed in prefill chunks", registry=r)
        self.generation_tokens = Counter(p + "generation_tokens", "Output tokens generated", registry=r)
        self.requests = Counter(p + "requests", "Finished requests", ["finish_reason"], registry=r)
        self.rejected = Counter(p + "rejected_requests", "Requests refused before admission", ["status"],
                                registry=r)
        self.preemptions = Counter(p + "preemptions", "Requests preempted for lack of KV blocks", registry=r)
        self.steps = Counter(p + "steps", "Engine steps", registry=r)
        self.step_time = Histogram(p + "step_duration_seconds", "Duration of one engine step", buckets=_STEP_BUCKETS,
                                   registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Arrival to first token", buckets=_LAT_BUCKETS,
                              registry=r)
        self.tpot = Histogram(p + "time_per_output_token_seconds", "Mean time between output tokens of a request",
                              buckets=_STEP_BUCKETS, registry=r)
        self.e2e = Histogram(p + "e2e_request_latency_seconds", "Arrival to finish", buckets=_LAT_BUCKETS, registry=r)
        self.waiting = Gauge(p + "num_requests_waiting", "Requests waiting", registry=r)
        self.running = Gauge(p + "num_requests_running", "Requests running", registry=r)
        self.kv_blocks = Gauge(p + "kv_blocks", "KV blocks by state", ["state"], registry=r)
        self.kv_usage = Gauge(p + "kv_usage_ratio", "Fraction of KV blocks referenced by requests", registry=r)
        self.prefill_rate = Gauge(p + "prefill_tokens_per_second", "Moving average of prefill throughput",
                                  registry=r)
        self.decode_step = Gauge(p + "decode_step_seconds", "Moving average of decode step duration", registry=r)
        self.gen_rate = Gauge(p + "generation_tokens_per_second", "Output tokens per second over the last 10 s",
                              registry=r)
        self.kv_host_blocks = Gauge(p + "kv_host_blocks", "Host-tier KV blocks by state", ["state"], registry=r)
        self.kv_offloaded = Counter(p + "kv_offloaded_blocks", "KV blocks copied from the device to the host tier",
                                    registry=r)
        self.kv_loaded = Counter(p + "kv_loaded_blocks", "KV blocks copied back from the host tier (prefix hits)",
                                 registry=r)
        self._counted = (0, 0)  # pool's (offloaded, loaded) at the last scrape
        self.events_seq = Gauge(p + "kv_events_seq", "Sequence number of the last KV event batch", registry=r)
        self._recent: deque[tuple[float, int]] = deque()
        engine.listeners.append(self)

    # -- engine listener ----------------------------------------------------------------------------------
    def on_step(self, stats: StepStats) -> None:
        self.steps.inc()
        self.step_time.observe(stats.duration)
        if stats.num_prefill_tokens:
            self.prefill_tokens.inc(stats.num_prefill_tokens)
        if stats.num_preempted:
            self.preemptions.inc(stats.num_preempted)
        if stats.num_sampled:
            self.generation_tokens.inc(stats.num_sampled)
            now = time.monotonic()
            self._recent.append((now, stats.num_sampled))
            self._trim_recent(now)  # here too, not only on scrape: unscraped replicas would grow without bound

    def _trim_recent(self, now: float) -> None:
        """Keep only the last 10 s of sampled-token counts (the window of ``gen_rate``)."""
        while self._recent and self._recent[0][0] < now - _GEN_RATE_WINDOW_S:
            self._recent.popleft()

    def on_admit(self, req: Request, cached_tokens: int) -> None:
        self.prompt_tokens.inc(req.num_prompt_tokens)
        if cached_tokens:
            self.prefix_hit_tokens.inc(cached_tokens)

    def on_finish(self, req: Request) -> None:
        now = time.monotonic()
        self.requests.labels(req.finish_reason or "abort").inc()
        n = req.num_output_tokens
        if req.first_token_time is not None:
            self.ttft.observe(req.first_token_time - req.arrival_time)
            if n > 1:
                self.tpot.observe((now - req.first_token_time) / (n - 1))
        self.e2e.observe(now - req.arrival_time)

    # -- exposition ---------------------------------------------------------------------------------------
    def render(self) -> bytes:
        e, pool = self.engine, self.engine.pool
        self.waiting.set(len(e.scheduler.waiting))
        self.running.set(len(e.scheduler.running))
        used, cached = pool.num_used, pool.num_cached
        self.kv_blocks.labels("used").set(used)
        self.kv_blocks.labels("cached").set(cached)
        self.kv_blocks.labels("free").set(pool.num_blocks - used - cached)
        self.kv_usage.set(used / pool.num_blocks)
        self.prefill_rate.set(e.prefill_tokens_per_s or 0.0)
        self.decode_step.set((e.decode_step_ms or 0.0) / 1e3)
        self.events_seq.set(e.publisher.seq)
        if pool.host is not None:
            self.kv_host_blocks.labels("cached").set(pool.num_host_cached)
            self.kv_host_blocks.labels("free").set(pool.num_host_slots - pool.num_host_cached)
            offloaded, loaded = self._counted
            self.kv_offloaded.inc(pool.num_offloaded - offloaded)
            self.kv_loaded.inc(pool.num_loaded - loaded)
            self._counted = (pool.num_offloaded, pool.num_loaded)
        self._trim_recent(time.monotonic())
        self.gen_rate.set(sum(n for _, n in self._recent) / _GEN_RATE_WINDOW_S)
        return generate_latest(self.registry)
