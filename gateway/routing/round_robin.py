"""``round_robin``: replicas in turn, ignoring load (the simplest baseline)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from gateway.routing.base import Decision, PolicyContext, ReplicaView, RequestView, RoutingPolicy


class RoundRobinPolicy(RoutingPolicy):
    """Rotates the candidate list by a global counter; the rest of the rotation is the retry order."""

    name = "round_robin"

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__(ctx)
        self._counter = itertools.count()

    def rank(self, request: RequestView, replicas: Sequence[ReplicaView]) -> Decision:
        start = next(self._counter) % len(replicas)
        ordered = [r.id for r in replicas[start:]] + [r.id for r in replicas[:start]]
        return Decision(ordered, reason="round_robin")
