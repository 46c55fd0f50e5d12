"""``least_load``: fewest requests in flight (from every gateway), ties broken at random."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.routing.base import Decision, ReplicaView, RequestView, RoutingPolicy


def inflight_of(r: ReplicaView) -> float:
    """In-flight requests: the replica's own report (running + waiting) when fresh, else every gateway's count.

    The report is ground truth but lags; the gateways' counts cover what was dispatched since (DESIGN.md 4), so
    the larger of the two is used.
    """
    counted = r.inflight
    if r.load is not None:
        reported = float(r.load.get("num_running", 0) or 0) + float(r.load.get("num_waiting", 0) or 0)
        return max(counted, reported)
    return counted


class LeastLoadPolicy(RoutingPolicy):
    name = "least_load"

    def rank(self, request: RequestView, replicas: Sequence[ReplicaView]) -> Decision:
        keyed = [(inflight_of(r), random.random(), r.id) for r in replicas]
        keyed.sort()
        return Decision([rid for _, _, rid in keyed], {rid: {"inflight": n} for n, _, rid in keyed},
                        reason="least_load")
