"""``foresight``, the default policy: send each request where its first token is predicted to come soonest.

Predicted TTFT on replica ``r`` (DESIGN.md section 5; every term in seconds, all in ``Decision.explanation``):

- ``queue_s``: prefill work ahead of the request / the replica's prefill rate. Work ahead = the larger of the
  replica's reported ``waiting_prompt_tokens`` (ground truth, but up to ~100 ms old) and every gateway's count of
  dispatched-but-not-started uncached prompt tokens (covers the lag; DESIGN.md section 4);
- ``prefill_s``: the request's own uncached prompt tokens (prompt minus the prefix ``r`` holds) / prefill rate;
- ``kv_s``: a KV-pressure penalty. Demand = KV in use + queued prompts + this request's uncached prompt and
  predicted output (p90 from the output-length estimator). What exceeds capacity must wait for enough running
  requests to finish (``_kv_wait``), which takes a share of their predicted decode time: the predicted output
  tokens in flight (the predictor's p50s, as the gateways account them) times the replica's decode step. So the
  decode work ahead enters through the predicted output lengths.

Rates (``prefill_tokens_per_s``, ``decode_step_ms``) are learned per replica from load reports (an exponential
average of non-zero reports, seeded by ``prefill_tps``/``decode_step_ms`` options). Replicas within
``near_rel`` (10%) or ``near_abs`` (5 ms) of the best are shuffled in front (power-of-k randomisation), so
gateways sharing stale views do not all herd onto one replica. Prompt tokens are the gateway's estimate corrected
by a learned factor (real prompt tokens over estimates of completed requests).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.routing.base import Decision, Outcome, PolicyContext, ReplicaView, RequestView, RoutingPolicy
from gateway.routing.prefix_match import PrefixMatcher


class _Rates:
    __slots__ = ("prefill_tps", "decode_step_s")

    def __init__(self, prefill_tps: float, decode_step_s: float) -> None:
        self.prefill_tps = prefill_tps
        self.decode_step_s = decode_step_s


class ForesightPolicy(RoutingPolicy):
    name = "foresight"

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__(ctx)
        o = ctx.options
        self.prior = _Rates(float(o.get("prefill_tps", 10000.0)), float(o.get("decode_step_ms", 25.0)) / 1000.0)
        self.kv_capacity_tokens = float(o.get("kv_capacity_tokens", 0.0))  # used when no report says better
        self.near_rel = float(o.get("near_rel", 0.1))
        self.near_abs = float(o.get("near_abs", 0.005))
        self.alpha = float(o.get("rate_alpha", 0.2))
        self.use_output = o.get("use_output_estimate", "1") not in ("0", "false", "no")
        self.work_weight = float(o.get("work_weight", 0.0))
        self.report_weight = float(o.get("report_weight", 1.0))
        self.rng = random.Random(o.get("seed"))
        self.matcher = PrefixMatcher(ctx)
        self.rates: dict[str, _Rates] = {}
        self.token_factor = 1.0  # real prompt tokens / gateway estimate, learned

    def _rates(self, r: ReplicaView) -> _Rates:
        rates = self.rates.get(r.id)
        if rates is None:
            rates = self.rates[r.id] = _Rates(self.prior.prefill_tps, self.prior.decode_step_s)
        load = r.load
        if load is not None:
            tps = float(load.get("prefill_tokens_per_s", 0) or 0)
            step = float(load.get("decode_step_ms", 0) or 0) / 1000.0
            if tps > 0:
                rates.prefill_tps += self.alpha * (tps - rates.prefill_tps)
            if step > 0:
                rates.decode_step_s += self.alpha * (step - rates.decode_step_s)
        return rates

    def costs(self, request: RequestView, replicas: Sequence[ReplicaView]) -> dict[str, dict[str, float]]:
        """Per-replica cost terms (seconds) for ``request``; the total is ``ttft_s``."""
        self.matcher.follow_capacity(replicas)
        matched = self.matcher.match(request, replicas)
        prompt = request.prompt_tokens * self.token_factor
        output = request.output_p90 if self.use_output else 0.0
        out: dict[str, dict[str, float]] = {}
        for r in replicas:
            rates = self._rates(r)
            load = r.load
            ahead = r.expected_prefill_tokens
            used = 0.0
            capacity = self.kv_capacity_tokens
            if load is not None:
                ahead = max(ahead, self.report_weight * float(load.get("waiting_prompt_tokens", 0) or 0))
                bs = float(load.get("block_size", 16) or 16)
                used = float(load.get("kv_blocks_used", 0) or 0) * bs
                capacity = float(load.get("kv_blocks_total", 0) or 0) * bs or capacity
            match = matched.get(r.id, 0.0)
            uncached = prompt * (1.0 - match)
            queue_s = ahead / rates.prefill_tps
            prefill_s = uncached / rates.prefill_tps
            kv_s = 0.0
            if capacity > 0:
                overflow = used + ahead + uncached + output - capacity
                if overflow > 0:
                    kv_s = self._kv_wait(overflow, used, r, rates)
            work_s = self.work_weight * prefill_s
            out[r.id] = {"queue_s": queue_s, "prefill_s": prefill_s, "kv_s": kv_s, "match": match,
                         "work_s": work_s, "ttft_s": queue_s + prefill_s + kv_s + work_s}
        return out

    @staticmethod
    def _kv_wait(overflow: float, used: float, r: ReplicaView, rates: _Rates) -> float:
        """Time until ``overflow`` KV tokens are freed by running requests finishing.

        Each of the ``n`` running requests holds about ``used / n`` tokens; ``k`` of them must finish. With their
        remaining decode times spread evenly over one predicted decode length (the predictor's mean output
        tokens per in-flight request, times the decode step), the k-th finishes after about ``k / (n + 1)`` of it.
        Needing more than ``n`` requests to finish means waiting for the whole batch and then queueing further.
        """
        n = max(1, r.inflight, int((r.load or {}).get("num_running", 0) or 0))
        per_request = max(used / n, 1.0)
        k = -(-overflow // per_request)
        decode_s = (r.expected_decode_tokens / max(1, r.inflight)) * rates.decode_step_s
        return k / (n + 1) * max(decode_s, rates.decode_step_s)

    def rank(self, request: RequestView, replicas: Sequence[ReplicaView]) -> Decision:
        costs = self.costs(request, replicas)
        order = sorted(costs, key=lambda rid: costs[rid]["ttft_s"])
        best = costs[order[0]]["ttft_s"]
        limit = best + max(self.near_abs, self.near_rel * best)
        near = [rid for rid in order if costs[rid]["ttft_s"] <= limit]
        if len(near) > 1:
            self.rng.shuffle(near)
            order = near + order[len(near):]
        chosen = costs[order[0]]
        request.scratch["uncached_prompt_tokens"] = request.prompt_tokens * self.token_factor * (1 - chosen["match"])
        return Decision(order, costs, reason=f"foresight:near={len(near)}")

    def on_dispatch(self, request: RequestView, replica_id: str) -> None:
        self.matcher.record(request, replica_id)

    def on_complete(self, request: RequestView, replica_id: str, outcome: Outcome) -> None:
        if outcome.ok and outcome.prompt_tokens and request.prompt_tokens > 0:
            self.token_factor += 0.05 * (outcome.prompt_tokens / request.prompt_tokens - self.token_factor)
            self.matcher.observe(request, outcome.prompt_tokens)

    def on_replica_change(self, replica_id: str, event: str) -> None:
        if event == "removed":
            self.matcher.forget(replica_id)
            self.rates.pop(replica_id, None)

    async def start(self) -> None:
        await self.matcher.start()

    async def close(self) -> None:
        await self.matcher.close()
