"""Work-based load shedding: reject at once what would only wait, so that what is admitted stays fast.

Count limits (``gateway.admission``) protect the gateway; they cannot tell whether a request will meet its latency
target, because requests differ in work. This check predicts, for each candidate replica, how long the request
would wait before its prefill starts, from the work already there (DESIGN.md sections 3 and 4):

- ``slot_wait_s``: a replica runs at most ``ceiling`` requests at once (its reported ``max_num_seqs``, lowered to
  its ``num_running`` whenever ``num_waiting`` > 0, i.e. when it was full before that, e.g. on KV). Beyond the ceiling the request queues
  until ``excess`` running requests finish; with their remaining decode times spread over one predicted decode
  time ``D`` (predicted output tokens in flight per request, from the estimator, times ``decode_step_ms``), the
  k-th finishes after about ``k * D / ceiling`` (a tail rather than a mean estimate).
- ``prefill_wait_s``: uncached prompt tokens dispatched ahead of it (the larger of the replica's report and every
  gateway's accounting) over the replica's prefill rate.

Routing only sees the candidates whose predicted wait is within ``max_queue_delay`` (``admissible``, called by
the proxy when it ranks); if there is none, the request is rejected in microseconds with 503 ``overloaded`` and
``Retry-After`` (about when the wait would have ended), instead of queueing and then timing out. Replicas without a load report yet (or never seen full) are assumed to have room. ``max_queue_delay`` <= 0
turns shedding off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter

from foresight.errors import APIError
from gateway.routing.base import ReplicaView, RequestView


def overloaded(what: str, predicted: float, limit: float) -> APIError:
    """The 503 ``overloaded`` of a request predicted to exceed ``limit`` seconds of ``what``, with a Retry-After
    of about when that would have ended (at least 1 s)."""
    return APIError(503, f"the cluster is overloaded (predicted {what} {predicted:.2f}s exceeds {limit:g}s); "
                         "retry later", code="overloaded", retry_after=max(1.0, math.ceil(predicted - limit)))


class OverloadShedder:
    def __init__(self, max_queue_delay: float = 0.05, registry: CollectorRegistry | None = None,
                 default_decode_step_s: float = 0.025, default_prefill_tps: float = 10000.0) -> None:
        self.max_queue_delay = max_queue_delay
        self.default_decode_step_s = default_decode_step_s
        self.default_prefill_tps = default_prefill_tps
        self.ceilings: dict[str, int] = {}
        self.shed = Counter("foresight_gateway_shed_total", "Requests rejected by work-based load shedding",
                            registry=registry) if registry is not None else None

    @property
    def enabled(self) -> bool:
        return self.max_queue_delay > 0

    def ceiling(self, r: ReplicaView) -> int | None:
        """Concurrent requests the replica runs before queueing (None: unknown, assume room).

        The replica's declared ``max_num_seqs`` (our replicas report it) bounds it; what it ran while requests
        waited (KV full before the sequence limit) lowers it; more running than that raises it again.
        """
        load = r.load
        learned = self.ceilings.get(r.id)
        declared = None
        if load is not None:
            declared = int(load.get("max_num_seqs", 0) or 0) or None
            running = int(load.get("num_running", 0) or 0)
            total = float(load.get("kv_blocks_total", 0) or 0)
            kv_full = total > 0 and float(load.get("kv_blocks_used", 0) or 0) >= 0.9 * total
            # A request waits for one scheduler step even with room; with a declared limit, only a full KV
            # cache says the real ceiling is lower.
            if int(load.get("num_waiting", 0) or 0) > 0 and running > 0 and (declared is None or kv_full):
                learned = self.ceilings[r.id] = running
            elif learned is not None and running > learned:
                learned = self.ceilings[r.id] = running
        if learned is not None and declared is not None:
            return min(learned, declared)
        return learned if learned is not None else declared

    def predicted_wait(self, request: RequestView, r: ReplicaView) -> float:
        load = r.load or {}
        step_s = float(load.get("decode_step_ms", 0) or 0) / 1000.0 or self.default_decode_step_s
        prefill_tps = float(load.get("prefill_tokens_per_s", 0) or 0) or self.default_prefill_tps
        ahead = max(r.expected_prefill_tokens, float(load.get("waiting_prompt_tokens", 0) or 0))
        wait = ahead / prefill_tps
        ceiling = self.ceiling(r)
        # Every gateway's own counts (DESIGN.md 4) are current; the report's are up to a probe interval old.
        inflight = r.inflight
        if ceiling is not None and inflight + 1 > ceiling:
            excess = inflight + 1 - ceiling
            per_request = r.expected_decode_tokens / max(1, r.inflight) if r.inflight else request.output_p50
            decode_s = max(per_request, 1.0) * step_s
            # The k-th of ``ceiling`` running requests to finish: about k/ceiling of a decode time (the tail of
            # the wait, not its mean k/(ceiling+1): the latency target is a percentile).
            wait += excess * decode_s / ceiling
        return wait

    def admissible(self, request: RequestView, candidates: Sequence[ReplicaView]) -> list[ReplicaView]:
        """The candidates whose predicted wait is within the limit (routing picks among them only, so an admitted
        request never lands on a full replica); 503 ``overloaded`` with ``Retry-After`` when none is."""
        if not self.enabled or not candidates:
            return list(candidates)
        waits = [(self.predicted_wait(request, r), r) for r in candidates]
        ok = [r for w, r in waits if w <= self.max_queue_delay]
        if not ok:
            best = min(w for w, _ in waits)
            if self.shed is not None:
                self.shed.inc()
            raise overloaded("wait", best, self.max_queue_delay)
        return ok

    def gate(self, request: RequestView, candidates: Sequence[ReplicaView], ranks_by_wait: bool) -> list[ReplicaView]:
        """What routing may rank: ``admissible``'s filter, or, for a policy that predicts each replica's wait
        itself (``RoutingPolicy.ranks_by_wait``), every candidate once one is admissible (the same 503 when none
        is). The filter would hide a replica with a queue that still serves the request soonest because it
        holds its prefix; measured on the Mooncake trace it halved foresight's prefix hit rate under load."""
        admitted = self.admissible(request, candidates)
        return list(candidates) if ranks_by_wait else admitted

    def check(self, request: RequestView, candidates: Sequence[ReplicaView]) -> float | None:
        """Raise 503 ``overloaded`` when every candidate's predicted wait exceeds the limit; else the best wait."""
        if not self.enabled or not candidates:
            return None
        self.admissible(request, candidates)
        return min(self.predicted_wait(request, r) for r in candidates)
