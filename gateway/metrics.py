"""Prometheus metrics of the gateway (``foresight_gateway_*``, DESIGN.md section 7), on a private registry.

Cheap on the hot path: label children are resolved once per (route, status, replica) and cached, so a request
costs a few dict lookups and counter increments. No label ever carries an API key or a prompt.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ITL = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_TOKENS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
BREAKER_STATES = ("closed", "half_open", "open")


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("foresight_gateway_requests_total", "Requests answered, by route, status and replica",
                                ["route", "status", "replica"], registry=r)
        self.ttft = Histogram("foresight_gateway_ttft_seconds", "Time to first byte of the response body",
                              ["route"], buckets=_LATENCY, registry=r)
        self.e2e = Histogram("foresight_gateway_e2e_seconds", "End-to-end request latency", ["route"],
                             buckets=_LATENCY, registry=r)
        self.itl = Histogram("foresight_gateway_itl_seconds", "Time between streamed chunks", ["route"],
                             buckets=_ITL, registry=r)
        self.tokens_in = Counter("foresight_gateway_prompt_tokens_total", "Prompt tokens (from upstream usage)",
                                 ["model"], registry=r)
        self.tokens_out = Counter("foresight_gateway_completion_tokens_total",
                                  "Completion tokens (from upstream usage)", ["model"], registry=r)
        self.inflight = Gauge("foresight_gateway_inflight_requests", "Requests in flight from this gateway",
                              ["replica"], registry=r)
        self.retries = Counter("foresight_gateway_retries_total", "Dispatches retried on another replica",
                               ["reason"], registry=r)
        self.breaker = Gauge("foresight_gateway_breaker_state", "1 for the replica's current breaker state",
                             ["replica", "state"], registry=r)
        self.decisions = Counter("foresight_gateway_routing_decisions_total", "Routing decisions",
                                 ["policy", "replica"], registry=r)
        self.rejected = Counter("foresight_gateway_rejected_total", "Requests rejected before dispatch",
                                ["reason"], registry=r)
        self.queue = Gauge("foresight_gateway_queue_depth", "Requests waiting for admission", registry=r)
        self.stream_errors = Counter("foresight_gateway_stream_errors_total",
                                     "Streams that failed after their first byte", registry=r)
        # Output-length prediction (what routing accounted for) against the completion's real length.
        self.predicted = Histogram("foresight_gateway_predicted_output_tokens", "Predicted p50 output tokens",
                                   ["model"], buckets=_TOKENS, registry=r)
        self.actual = Histogram("foresight_gateway_actual_output_tokens", "Output tokens of completed requests",
                                ["model"], buckets=_TOKENS, registry=r)
        self.prediction_error = Histogram("foresight_gateway_prediction_error_tokens",
                                          "|predicted p50 - actual| output tokens", ["model"], buckets=_TOKENS,
                                          registry=r)
        self.p90_covered = Counter("foresight_gateway_prediction_p90_covered_total",
                                   "Completions whose output was at most the predicted p90", ["model"], registry=r)
        self.observations = Counter("foresight_gateway_predictor_observations_total",
                                    "True output lengths fed back to the predictor (online updates)", ["model"],
                                    registry=r)
        self._req_children: dict[tuple[str, str, str], object] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: prometheus-client's own lookup costs microseconds per call."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_prediction(self, model: str, p50: float, p90: float, actual: int) -> None:
        self.child(self.predicted, model).observe(p50)
        self.child(self.actual, model).observe(actual)
        self.child(self.prediction_error, model).observe(abs(p50 - actual))
        self.child(self.observations, model).inc()
        if actual <= p90:
            self.child(self.p90_covered, model).inc()

    def count_request(self, route: str, status: int, replica: str) -> None:
        key = (route, str(status), replica)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(*key)
        child.inc()  # type: ignore[attr-defined]

    def set_breaker(self, replica: str, state: str) -> None:
        for s in BREAKER_STATES:
            self.breaker.labels(replica, s).set(1.0 if s == state else 0.0)

    def forget_replica(self, replica: str) -> None:
        for s in BREAKER_STATES:
            try:
                self.breaker.remove(replica, s)
            except KeyError:
                pass
        try:
            self.inflight.remove(replica)
        except KeyError:
            pass
        self._children = {k: v for k, v in self._children.items() if replica not in k[1]}

    def render(self) -> bytes:
        return generate_latest(self.registry)
