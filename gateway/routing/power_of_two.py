"""``power_of_two``: sample two replicas at random, take the less loaded one (Mitzenmacher's two choices)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.routing.base import Decision, ReplicaView, RequestView, RoutingPolicy
from gateway.routing.least_load import inflight_of


class PowerOfTwoPolicy(RoutingPolicy):
    """The winner of the two-sample duel first, then the loser, then the rest by load (the retry order)."""

    name = "power_of_two"

    def rank(self, request: RequestView, replicas: Sequence[ReplicaView]) -> Decision:
        if len(replicas) == 1:
            return Decision([replicas[0].id], reason="power_of_two")
        a, b = random.sample(range(len(replicas)), 2)
        pair = sorted((replicas[a], replicas[b]), key=inflight_of)
        rest = sorted((r for i, r in enumerate(replicas) if i not in (a, b)), key=inflight_of)
        ordered = pair + rest
        return Decision([r.id for r in ordered], {r.id: {"inflight": inflight_of(r)} for r in pair},
                        reason="power_of_two")
