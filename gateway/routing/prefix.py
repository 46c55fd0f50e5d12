"""``prefix``: a faithful baseline of SGLang router's ``cache_aware`` policy (the documented algorithm).

Per request, with ``load`` = requests in flight on a replica as routers count them (every gateway's dispatches):

1. The pool is *imbalanced* when ``max_load - min_load > balance_abs_threshold`` (64) **and**
   ``max_load > balance_rel_threshold * min_load`` (1.5): route to the least loaded replica (shortest queue).
2. Otherwise take the replica with the longest cached prefix (SGLang: an approximate radix tree of the text
   routed to each worker; here the same idea at chunk granularity, ``PrefixMatcher``). If its match rate
   (matched / prompt characters) exceeds ``cache_threshold`` (0.3), route there.
3. Otherwise route to the least loaded replica (as the issue specifies); ``miss_choice=smallest_tree`` routes to
   the replica whose index holds the least instead, as SGLang's router README describes for this case.

The chosen replica then "holds" the prompt (recorded on dispatch, like SGLang inserts the text into its tree).
Ties are broken at random. The ranking after the first entry (the retry order) is by load.
Options: ``balance_abs_threshold``, ``balance_rel_threshold``, ``cache_threshold`` and the matcher's options.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.routing.base import Decision, Outcome, PolicyContext, ReplicaView, RequestView, RoutingPolicy
from gateway.routing.prefix_match import PrefixMatcher


class PrefixPolicy(RoutingPolicy):
    name = "prefix"

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__(ctx)
        opts = ctx.options
        self.abs_threshold = float(opts.get("balance_abs_threshold", 64))
        self.rel_threshold = float(opts.get("balance_rel_threshold", 1.5))
        self.cache_threshold = float(opts.get("cache_threshold", 0.3))
        self.matcher = PrefixMatcher(ctx)
        self.miss_choice = opts.get("miss_choice", "least_load")
        if self.miss_choice not in ("least_load", "smallest_tree"):
            raise ValueError(f"miss_choice must be least_load or smallest_tree, got {self.miss_choice!r}")
        self.rng = random.Random(opts.get("seed"))

    def rank(self, request: RequestView, replicas: Sequence[ReplicaView]) -> Decision:
        loads = {r.id: r.inflight for r in replicas}
        by_load = sorted(replicas, key=lambda r: (loads[r.id], self.rng.random()))
        lo, hi = loads[by_load[0].id], loads[by_load[-1].id]
        self.matcher.follow_capacity(replicas)
        rates = self.matcher.match(request, replicas)
        explain = {r.id: {"load": float(loads[r.id]), "match": rates.get(r.id, 0.0)} for r in replicas}
        if hi - lo > self.abs_threshold and hi > lo * self.rel_threshold:
            chosen, reason = by_load[0], "imbalanced->least_load"
        else:
            best = max(rates.values(), default=0.0)
            if best > self.cache_threshold:
                tied = [r for r in replicas if rates.get(r.id, 0.0) == best]
                chosen, reason = self.rng.choice(tied), "cache_hit"
            elif self.miss_choice == "smallest_tree":
                lru = self.matcher.index.lru
                chosen = min(replicas, key=lambda r: (len(lru.get(r.id, ())), loads[r.id], self.rng.random()))
                reason = "cache_miss->smallest_tree"
            else:
                chosen, reason = by_load[0], "cache_miss->least_load"
        ranked = [chosen.id] + [r.id for r in by_load if r.id != chosen.id]
        request.scratch["uncached_prompt_tokens"] = request.prompt_tokens * (1.0 - rates.get(chosen.id, 0.0))
        return Decision(ranked, explain, reason=f"prefix:{reason}")

    def on_dispatch(self, request: RequestView, replica_id: str) -> None:
        self.matcher.record(request, replica_id)

    def on_complete(self, request: RequestView, replica_id: str, outcome: Outcome) -> None:
        if outcome.ok:
            self.matcher.observe(request, outcome.prompt_tokens)

    def on_replica_change(self, replica_id: str, event: str) -> None:
        if event == "removed":
            self.matcher.forget(replica_id)

    async def start(self) -> None:
        await self.matcher.start()

    async def close(self) -> None:
        await self.matcher.close()
