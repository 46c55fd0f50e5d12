"""``foresight``, the default policy: send each request where its first token is predicted to come soonest.

Predicted TTFT on replica ``r`` (DESIGN.md section 5; every term in seconds, all in ``Decision.explanation``):

- ``queue_s``: prefill work ahead of the request / the replica's prefill rate. Work ahead = the larger of the
  replica's reported ``waiting_prompt_tokens`` (ground truth, but up to ~100 ms old) and every gateway's count of
  dispatched-but-not-started uncached prompt tokens (covers the lag; DESIGN.md section 4). A replica that reserves
  part of each step for admissions (``prefill_reserve`` in its report) admits the request beside its long running
  prefills (``long_prefill_tokens`` left): those delay it only by their share of the steps its own queue and
  prefill take. The whole queue counts even under priorities: a request a replica would admit early still pushes
  every longer job there back, and sizing the wait by the request's own priority share piled short jobs onto few
  replicas (Azure SLO attainment 0.93 -> 0.86 at 200 rps);
- ``prefill_s``: the request's own uncached prompt tokens (prompt minus the prefix ``r`` holds) / prefill rate;
- ``kv_s``: a KV-pressure penalty. Demand = KV in use + queued prompts + this request's uncached prompt and
  predicted output (p90 from the output-length estimator). What exceeds capacity must wait for enough running
  requests to finish (``_kv_wait``), which takes a share of their predicted decode time: the predicted output
  tokens in flight (the predictor's p50s, as the gateways account them) times the replica's decode step. So the
  decode work ahead enters through the predicted output lengths. The same wait applies when the replica has no
  free sequence slot (in-flight requests >= its reported ``max_num_seqs``).
- ``work_s``: ``work_weight`` (3) times the uncached prefill at the fleet's average rate: the work this decision
  adds to the fleet. Recomputing a prefix that another replica holds costs that replica's later requests nothing
  but costs the fleet the work (and a second copy of the prefix), which delays requests to come; TTFT alone is
  blind to it. On the whole Mooncake trace
  at 2.5x it keeps conversations with their cache (prefix hit rate 0.29 at weight 0, 0.305 at 2, 0.315 at 3, of a
  0.327 bound) for a p90 TTFT ~10% higher; without shared prefixes it is the same everywhere and changes nothing.
  When the whole fleet is queueing (even the replica with the shortest wait has ``w`` seconds of work ahead), added
  work delays every request queued behind it, not one: the weight grows to ``work_weight * (1 + w / backlog_s)``
  (``backlog_s`` 0.1; 0 turns it off). Without it, sustained overload fed on itself: queues grew, requests left
  their cached replicas to dodge them, the lost hits added work and the queues grew faster (whole Mooncake trace
  at 3.25x, replicas as vLLM schedules: hit rate 0.16 and SLO attainment 0.29; with it 0.31 and 0.88, where
  ``prefix`` reaches 0.76).

Rates (``prefill_tokens_per_s``, ``decode_step_ms``) are learned per replica from load reports (an exponential
average of non-zero reports; ``foresight_state``). A replica that has not measured a rate yet uses the fleet's
average of measured ones (the ``prefill_tps``/``decode_step_ms`` options before any measurement). With three or
more measured replicas, a prefill rate counts at most ``rate_spread`` (4) times their median (0: no cap): GPUs in
one fleet differ by a few times at most, and a replica that reports an impossible rate (a measurement bug: the
simulated replicas once reported up to 20x their model's) would otherwise draw the fleet's work and stall it.
``Decision.explanation`` carries the terms of the ``explain_top`` (8) best replicas; ``costs`` gives all of them.

Replicas within ``near_rel`` (10%) or ``near_abs`` (5 ms) of the best are shuffled in front (power-of-k
randomisation), so gateways sharing stale views do not all herd onto one replica. Between two state syncs (a new
``view.remote``), each of the ``peers`` other gateways is assumed to dispatch as this one did (its own dispatches
since the sync count ``1 + peers`` times), so a burst split across gateways does not land on one replica from all
of them. Prompt tokens are the gateway's estimate corrected by a learned factor (real prompt tokens over estimates
of completed requests).

With the ``priority`` option (default on), the request's predicted work (uncached prompt tokens plus predicted
output tokens) goes to the chosen replica as its admission priority (``X-Foresight-Priority``, lower first): a
replica with a queue admits the shortest predicted job first, so under overload most requests still meet a TTFT
target while the longest wait (a replica's ``--priority-max-wait`` bounds that wait).

Deadline-aware admission (``reject_ttft`` seconds, off by default; ``admit``): a new request whose predicted TTFT
on the chosen replica exceeds ``reject_ttft`` while its predicted wait (``queue_s`` + ``kv_s``) is at least
``reject_min_wait`` gets 503 ``overloaded``: it would miss that target anyway and delay every request behind it
(whole Mooncake hour, DES: 90% within a 3 s TTFT target up to 6x the trace's rate instead of 3.5x, rejecting the
longest prompts; docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence

from gateway.overload import overloaded
from gateway.routing.base import Decision, Outcome, PolicyContext, ReplicaView, RequestView, RoutingPolicy
from gateway.routing.foresight_state import ReplicaState
from gateway.routing.prefix_match import PrefixMatcher
from gateway.state.base import StoreUnavailable


class ForesightPolicy(RoutingPolicy):
    name = "foresight"
    ranks_by_wait = True

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__(ctx)
        o = ctx.options
        self.prior_tps = float(o.get("prefill_tps", 10000.0))
        self.prior_step_s = float(o.get("decode_step_ms", 25.0)) / 1000.0
        self.kv_capacity_tokens = float(o.get("kv_capacity_tokens", 0.0))  # used when no report says better
        self.near_rel = float(o.get("near_rel", 0.1))
        self.near_abs = float(o.get("near_abs", 0.005))
        self.alpha = float(o.get("rate_alpha", 0.2))
        self.use_output = o.get("use_output_estimate", "1") not in ("0", "false", "no")
        self.work_weight = float(o.get("work_weight", 3.0))
        self.backlog_s = float(o.get("backlog_s", 0.1))
        self.report_weight = float(o.get("report_weight", 1.0))
        self.rate_spread = float(o.get("rate_spread", 4.0))
        self._tps_cap = float("inf")  # rate_spread x the median measured prefill rate, refreshed on new reports
        self._rates_changed = True
        self.explain_top = int(o.get("explain_top", 8))
        # Deadline-aware admission (off by default): reject with 503 ``overloaded`` a request whose predicted TTFT
        # on the best replica exceeds this many seconds, i.e. one that would miss a TTFT target of about that
        # size anyway and would delay every request behind it on the way.
        self.reject_ttft = float(o.get("reject_ttft", 0.0))
        self.reject_min_wait = float(o.get("reject_min_wait", 0.0))  # ...and whose wait is at least this long
        # Send the predicted work (uncached prompt + predicted output tokens) as the replica's admission priority:
        # a replica with a queue admits the shortest predicted job first (replicas/engine/scheduler.py).
        self.send_priority = o.get("priority", "1") not in ("0", "false", "no")
        # Other gateways sharing the replicas (counted from the store in the background; an option for tests).
        self.peers = int(o.get("peer_gateways", 0))
        self._peer_task: asyncio.Task | None = None
        self.rng = random.Random(o.get("seed"))
        self.matcher = PrefixMatcher(ctx)
        self.rates: dict[str, ReplicaState] = {}
        self.fleet_tps, self.fleet_step_s = self.prior_tps, self.prior_step_s
        self._fleet_seen = self._fleet_step_seen = False
        self.token_factor = 1.0  # real prompt tokens / gateway estimate, learned

    def _state(self, r: ReplicaView) -> ReplicaState:
        st = self.rates.get(r.id)
        if st is None:
            st = self.rates[r.id] = ReplicaState(self.prior_tps, self.prior_step_s, self.kv_capacity_tokens)
        if st.update(r.load, self.alpha, self.report_weight):
            self._rates_changed = True
            if st.cache_blocks_total:
                self.matcher.set_replica_kv(r.id, st.cache_blocks_total * st.block_size)
            # The fleet's rates, for replicas that have not measured their own yet (idle since they started):
            # a fixed prior would make every measured replica look faster or slower than the unmeasured ones.
            if st.tps_learned:
                self.fleet_tps += 0.05 * (st.prefill_tps - self.fleet_tps) if self._fleet_seen else 0.0
                if not self._fleet_seen:
                    self.fleet_tps, self._fleet_seen = st.prefill_tps, True
            if st.step_learned:
                self.fleet_step_s += 0.05 * (st.decode_step_s - self.fleet_step_s) if self._fleet_step_seen else 0.0
                if not self._fleet_step_seen:
                    self.fleet_step_s, self._fleet_step_seen = st.decode_step_s, True
        if not st.tps_learned:
            st.prefill_tps = self.fleet_tps
        if not st.step_learned:
            st.decode_step_s = self.fleet_step_s
        st.sync_remote(r.remote)
        return st

    def _terms(self, r: ReplicaView, st: ReplicaState, match: float, prompt: float, output: float,
               ) -> tuple[float, float, float, float]:
        """``(queue_s, prefill_s, kv_s, work_s)`` of ``request`` on ``r``; see the module docstring."""
        ahead = r.local.prefill_tokens + r.remote.prefill_tokens + self.peers * st.own_prefill
        uncached = prompt * (1.0 - match)
        # Long running prefills share each step with admissions: they delay this request by at most their share of
        # the steps its own queue and prefill take, not by all their remaining tokens.
        ratio = st.beside_ratio if st.long_prefill else None
        if ratio is not None:
            ahead = max(0.0, ahead - st.long_prefill_total)  # the gateways counted them whole on dispatch
        if st.waiting > ahead:
            ahead = st.waiting
        beside = min(st.long_prefill, (ahead + uncached) * ratio) if ratio is not None else 0.0
        tps = min(st.prefill_tps, self._tps_cap)
        queue_s = (ahead + beside) / tps
        prefill_s = uncached / tps
        kv_s = 0.0
        if st.capacity > 0:
            overflow = st.used + ahead + beside + uncached + output - st.capacity
            if overflow > 0:
                kv_s = self._kv_wait(overflow, st, r)
        if st.max_num_seqs:
            # No free sequence slot: wait for enough running requests to finish, like a KV shortage.
            excess = r.local.requests + r.remote.requests + self.peers * st.own_requests + 1 - st.max_num_seqs
            if excess > 0:
                kv_s = max(kv_s, self._finish_wait(excess, st, r))
        # The fleet's work, at the fleet's rate: one replica's noisier measured rate must not tilt the choice.
        return queue_s, prefill_s, kv_s, self.work_weight * uncached / self.fleet_tps

    def _rate_cap(self, states: Sequence[ReplicaState]) -> float:
        """``rate_spread`` times the median measured prefill rate (inf with fewer than three measured)."""
        measured = sorted(st.prefill_tps for st in states if st.tps_learned)
        if self.rate_spread <= 0 or len(measured) < 3:
            return float("inf")
        return self.rate_spread * measured[len(measured) // 2]

    @staticmethod
    def _kv_wait(overflow: float, st: ReplicaState, r: ReplicaView) -> float:
        """Time until ``overflow`` KV tokens are freed by running requests finishing.

        Each of the ``n`` running requests holds about ``used / n`` tokens; ``k`` of them must finish. With their
        remaining decode times spread evenly over one predicted decode length (the predictor's mean output
        tokens per in-flight request, times the decode step), the k-th finishes after about ``k / (n + 1)`` of it.
        Needing more than ``n`` requests to finish means waiting for the whole batch and then queueing further.
        """
        n = max(1, r.local.requests + r.remote.requests, st.running)
        per_request = max(st.used / n, 1.0)
        return ForesightPolicy._finish_wait(-(-overflow // per_request), st, r)

    @staticmethod
    def _finish_wait(k: float, st: ReplicaState, r: ReplicaView) -> float:
        """Time until ``k`` of the replica's running requests have finished (see ``_kv_wait``)."""
        inflight = r.local.requests + r.remote.requests
        n = max(1, inflight, st.running)
        decode_s = ((r.local.decode_tokens + r.remote.decode_tokens) / max(1, inflight)) * st.decode_step_s
        return k / (n + 1) * max(decode_s, st.decode_step_s)

    def costs(self, request: RequestView, replicas: Sequence[ReplicaView]) -> dict[str, dict[str, float]]:
        """Every replica's cost terms (seconds) for ``request``; the total is ``ttft_s``."""
        totals, terms, matched = self._score(request, replicas)
        return {r.id: self._explain(t, matched.get(r.id, 0.0)) for r, t in zip(replicas, terms, strict=True)}

    @staticmethod
    def _explain(t: tuple[float, float, float, float], match: float) -> dict[str, float]:
        return {"queue_s": t[0], "prefill_s": t[1], "kv_s": t[2], "work_s": t[3], "match": match,
                "ttft_s": t[0] + t[1] + t[2] + t[3]}

    def _score(self, request: RequestView, replicas: Sequence[ReplicaView],
               ) -> tuple[list[float], list[tuple[float, float, float, float]], dict[str, float]]:
        states = [self._state(r) for r in replicas]
        if self._rates_changed:
            self._rates_changed = False
            self._tps_cap = self._rate_cap(states)
        matched = self.matcher.match(request, replicas)
        prompt = request.prompt_tokens * self.token_factor
        output = request.output_p90 if self.use_output else 0.0
        terms = [self._terms(r, st, matched.get(r.id, 0.0), prompt, output)
                 for r, st in zip(replicas, states, strict=True)]
        if self.backlog_s > 0 and terms:
            wait = min(t[0] + t[2] for t in terms)
            if wait > 0:
                scale = 1.0 + wait / self.backlog_s
                terms = [(a, b, c, d * scale) for a, b, c, d in terms]
        return [a + b + c + d for a, b, c, d in terms], terms, matched

    def rank(self, request: RequestView, replicas: Sequence[ReplicaView]) -> Decision:
        totals, terms, matched = self._score(request, replicas)
        order = sorted(range(len(replicas)), key=totals.__getitem__)
        best = totals[order[0]]
        # Near ties are judged on the predicted TTFT: the fleet-work term must not widen the window.
        limit = best + max(self.near_abs, self.near_rel * (best - terms[order[0]][3]))
        near = 1
        while near < len(order) and totals[order[near]] <= limit:
            near += 1
        if near > 1:
            head = order[:near]
            self.rng.shuffle(head)
            order[:near] = head
        chosen = order[0]
        queue_s, prefill_s, kv_s, _ = terms[chosen]
        request.scratch["predicted_wait_s"] = queue_s + kv_s
        request.scratch["predicted_ttft_s"] = queue_s + prefill_s + kv_s  # without the fleet-work weight
        uncached = request.prompt_tokens * self.token_factor * (1 - matched.get(replicas[chosen].id, 0.0))
        request.scratch["uncached_prompt_tokens"] = uncached
        if self.send_priority:
            request.scratch["priority"] = int(uncached + (request.output_p50 if self.use_output else 0.0))
        explanation = {replicas[i].id: self._explain(terms[i], matched.get(replicas[i].id, 0.0))
                       for i in order[: self.explain_top]}
        return Decision([replicas[i].id for i in order], explanation, reason=f"foresight:near={near}")

    def admit(self, request: RequestView) -> None:
        """Deadline-aware admission (``reject_ttft``, off by default): 503 ``overloaded`` when the best replica's
        predicted TTFT exceeds ``reject_ttft`` and its predicted wait is at least ``reject_min_wait``."""
        predicted = float(request.scratch.get("predicted_ttft_s", 0.0))
        if 0 < self.reject_ttft < predicted and request.scratch.get("predicted_wait_s", 0.0) >= self.reject_min_wait:
            raise overloaded("time to first token", predicted, self.reject_ttft)

    def on_dispatch(self, request: RequestView, replica_id: str) -> None:
        self.matcher.record(request, replica_id)
        st = self.rates.get(replica_id)
        if st is not None:
            st.own_requests += 1
            st.own_prefill += float(request.scratch.get("uncached_prompt_tokens", request.prompt_tokens))
            st.own_decode += request.output_p50

    def on_complete(self, request: RequestView, replica_id: str, outcome: Outcome) -> None:
        if outcome.ok and outcome.prompt_tokens and request.prompt_tokens > 0:
            self.token_factor += 0.05 * (outcome.prompt_tokens / request.prompt_tokens - self.token_factor)
            self.matcher.observe(request, outcome.prompt_tokens)

    def on_replica_change(self, replica_id: str, event: str) -> None:
        if event == "removed":
            self.matcher.forget(replica_id)
            self.rates.pop(replica_id, None)

    async def _count_peers(self) -> None:
        store = self.ctx.store
        assert store is not None
        while True:
            try:
                live = await store.get_inflight()
                self.peers = len(live) - (1 if self.ctx.gateway_id in live else 0)
            except StoreUnavailable:
                pass  # keep the last count; the sync task reports the outage
            await asyncio.sleep(1.0)

    async def start(self) -> None:
        await self.matcher.start()
        if self.ctx.store is not None and "peer_gateways" not in self.ctx.options:
            self._peer_task = asyncio.create_task(self._count_peers(), name="foresight-peers")

    async def close(self) -> None:
        if self._peer_task is not None:
            self._peer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._peer_task
        await self.matcher.close()
