"""The discrete-event loop: gateways (real policies, accounting, estimators) in front of ``SimReplica``s.

Events on one virtual clock: request arrivals, replica step ends, a periodic tick (every ``report_interval``)
at which replicas' load reports reach the gateways, and with several gateways a sync (every ``sync_interval``) at
which they see each other's in-flight counts (as ``PeerInflight`` pushes them through the store) and a share (every
``share_interval``) that delivers approximate-index deltas (``SharedApproxIndex`` publishes within ~5 ms of a
decision). Precise-mode
indexes receive each step's KV events as numbered batches. Decision time is measured around ``policy.rank`` twice: wall clock, and this thread's CPU time (immune to the OS
preempting the process on a shared machine).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.des.replica import SimReplica
from bench.des.workload import prompt_text, prompt_tokens
from bench.replay_client import Result
from bench.traces import TraceRequest
from foresight.errors import APIError
from foresight.hashing import block_ids
from gateway.accounting import Ticket
from gateway.estimator import HistoryEstimator, OutputEstimate
from gateway.overload import OverloadShedder
from gateway.routing.base import InflightCounts, Outcome, PolicyContext, ReplicaView, RequestView, create_policy
from gateway.state.memory import MemoryStore
from replicas.runners.cost_model import profile


@dataclass
class SimConfig:
    policy: str
    replicas: int = 8
    profile: str = "h100-llama8b"
    options: dict[str, str] = field(default_factory=dict)
    gateways: int = 1
    report_interval: float = 0.1  # replicas' load reports reach the gateways (their probes of /load)
    # Gateways see each other's in-flight counts: pushed on change (checked every 10 ms, PeerInflight) plus a
    # pub/sub hop, rounded up; 0.1 would model the polled StateSync alone (--inflight-push-interval 0).
    sync_interval: float = 0.02
    # Approximate-index deltas reach peer gateways this long after a decision at most: the publisher's
    # coalescing delay (5 ms) plus a pub/sub hop, rounded up (SharedApproxIndex).
    share_interval: float = 0.02
    estimator: str = "history"  # history (the gateway's fallback) | predictor (the learned one) | oracle
    drain_s: float = 900.0  # after the last arrival, unfinished requests count as failed
    kv_blocks: int | None = None
    host_kv_memory: int = 0  # bytes of host-tier KV per replica (0: none)
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    decode_step_tokens: int | None = None
    block_size: int = 16
    # The gateway's work-based load shedding (``--shed-queue-delay``; gateway/overload.py): 0 models a gateway
    # with it off, as every DES result before it was modelled; the gateway's default is 0.5.
    shed_queue_delay: float = 0.0


class OracleEstimator:
    """The true output length as the estimate: an upper bound on what any predictor can add (never a product path)."""

    def estimate(self, model: str, body: Any, prompt_text: str, prompt_tokens: int) -> OutputEstimate:
        n = float(body["_true_output"])
        return OutputEstimate(n, n, "oracle")

    def observe(self, *args: Any) -> None:
        pass


@dataclass
class _Live:
    req: TraceRequest
    result: Result
    view: RequestView
    gateway: int
    replica: int
    ticket: Ticket
    sent: float
    first: float | None = None


@dataclass
class SimOutcome:
    results: list[Result]
    decision_s: list[float]
    decision_cpu_s: list[float]
    prefix_hit_rate: float | None
    virtual_s: float
    wall_s: float
    preemptions: int
    policy_stats: dict[str, Any]


class Cluster:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        cost = profile(cfg.profile)
        host_blocks = cost.kv_blocks_in(cfg.host_kv_memory, cfg.block_size)
        self.replicas = [SimReplica(f"r{i}", cost, block_size=cfg.block_size, kv_blocks=cfg.kv_blocks,
                                    host_blocks=host_blocks, max_num_seqs=cfg.max_num_seqs,
                                    max_batched_tokens=cfg.max_batched_tokens,
                                    decode_step_tokens=cfg.decode_step_tokens)
                         for i in range(cfg.replicas)]
        self.policies = []
        self.views: list[list[ReplicaView]] = []
        for g in range(cfg.gateways):
            # Several gateways get a store so their index deltas queue up; the tick delivers them (no event loop).
            store = MemoryStore() if cfg.gateways > 1 else None
            ctx = PolicyContext(f"gw{g}", store=store, options={"seed": str(g), **cfg.options},
                                block_size=cfg.block_size)
            policy = create_policy(cfg.policy, ctx)
            if hasattr(policy, "peers"):  # what the policy's background task counts in the store
                policy.peers = cfg.gateways - 1
            self.policies.append(policy)
            self.views.append([ReplicaView(r.id, f"sim://{r.id}", ("sim",)) for r in self.replicas])
        self.shedders = [OverloadShedder(cfg.shed_queue_delay) for _ in range(cfg.gateways)]
        self.num_shed = 0
        self.precise = [getattr(getattr(p, "matcher", None), "precise", None) for p in self.policies]
        for idx in self.precise:
            if idx is not None:
                for r in self.replicas:
                    idx.index.load_snapshot(r.id, [], seq=0, epoch="sim")
        if cfg.estimator == "history":
            self.estimators: list[Any] = [HistoryEstimator() for _ in range(cfg.gateways)]
        elif cfg.estimator == "oracle":
            self.estimators = [OracleEstimator() for _ in range(cfg.gateways)]
        elif cfg.estimator == "predictor":
            from gateway.predictor_adapter import PredictorEstimator

            self.estimators = [PredictorEstimator.load("default") for _ in range(cfg.gateways)]
        else:
            raise ValueError(f"unknown estimator {cfg.estimator!r}")
        self.heap: list[tuple[float, int, str, Any]] = []
        self.n = 0
        self.live: dict[str, _Live] = {}
        self.decision_s: list[float] = []  # wall clock (includes preemption by other processes)
        self.decision_cpu_s: list[float] = []  # this thread's CPU time: the decision's own cost
        self.results: list[Result] = []

    def push(self, t: float, kind: str, data: Any) -> None:
        self.n += 1
        heapq.heappush(self.heap, (t, self.n, kind, data))

    def _arrive(self, t: float, req: TraceRequest) -> None:
        g = req.index % self.cfg.gateways
        tokens = prompt_tokens(req) if req.prompt is None else list(req.prompt.encode())[: max(1, req.input_length)]
        text = prompt_text(tokens) if req.prompt is None else req.prompt
        # Content requests are chat requests to the model that answered them in the dataset (its name is the
        # strongest length cue a gateway serving several models has); trace requests are bare completions.
        model = req.tag or "sim"
        body: dict[str, Any] = {"_true_output": req.output_length, "model": model}
        if req.prompt is not None:
            body["messages"] = [{"role": "user", "content": req.prompt}]
        est = self.estimators[g].estimate(model, body, text, len(tokens))
        view = RequestView(f"q{req.index}", model, "chat" if req.prompt is not None else "completions", text, body,
                           None, len(tokens), est.p50, est.p90)
        if self.precise[g] is not None:
            view.scratch["prefix_keys"] = block_ids(tokens, self.cfg.block_size)
            view.scratch["prompt_token_count"] = len(tokens)
        result = Result(req.index, req.arrival_s, len(tokens), req.output_length)
        self.results.append(result)
        policy = self.policies[g]
        c0, t0 = time.thread_time(), time.perf_counter()
        try:  # as the proxy does: routing ranks only the replicas the shedder admits, or the request gets a 503
            candidates = self.shedders[g].gate(view, self.views[g], policy.ranks_by_wait)
            decision = policy.rank(view, candidates)
            policy.admit(view)  # a policy may reject too (foresight's reject_ttft), as in the proxy
        except APIError:
            result.status, result.http_status, result.error = "rejected", 503, "overloaded"
            self.num_shed += 1
            return
        self.decision_s.append(time.perf_counter() - t0)
        self.decision_cpu_s.append(time.thread_time() - c0)
        ri = int(decision.ranked[0][1:])
        rv = self.views[g][ri]
        ticket = Ticket(rv.local, float(view.scratch.get("uncached_prompt_tokens", view.prompt_tokens)), est.p50)
        policy.on_dispatch(view, rv.id)
        self.live[view.request_id] = _Live(req, result, view, g, ri, ticket, t)
        replica = self.replicas[ri]
        replica.add(view.request_id, tokens, req.output_length, t, int(view.scratch.get("priority", 0)))
        if not replica.busy:
            self._step(t, ri)

    def _step(self, t: float, ri: int) -> None:
        replica = self.replicas[ri]
        duration = replica.begin_step(t)
        for req in replica.unfit:
            self._finish(t, self.live.pop(req.request_id), ok=False)
        replica.unfit.clear()
        if duration is not None:
            self.push(t + duration, "step", ri)

    def _finish(self, t: float, live: _Live, ok: bool, cached: int = 0) -> None:
        res = live.result
        live.ticket.release()
        out = Outcome(ok=ok, first_token=live.first is not None, output_tokens=res.output_tokens if ok else None,
                      prompt_tokens=res.input_length, cached_tokens=cached)
        self.policies[live.gateway].on_complete(live.view, self.replicas[live.replica].id, out)
        if ok:
            res.status = "ok"
            res.e2e = t - live.sent
            res.tpot = (t - live.first) / (res.output_tokens - 1) if res.output_tokens > 1 else 0.0
            self.estimators[live.gateway].observe(live.view.model, live.view.body, live.view.prompt_text,
                                                  live.view.prompt_tokens, res.output_tokens)
        else:
            res.error = "unfittable or unfinished"

    def _step_end(self, t: float, ri: int) -> None:
        replica = self.replicas[ri]
        step = replica.end_step()
        for req in step.first_tokens:
            live = self.live[req.request_id]
            live.first = t
            live.result.ttft = t - live.sent
            live.ticket.first_token()
            self.policies[live.gateway].on_first_token(live.view, replica.id)
        for req in step.finished:
            live = self.live.pop(req.request_id)
            live.result.output_tokens = req.num_output_tokens
            self._finish(t, live, ok=True, cached=req.num_cached_tokens)
        if step.events:
            for idx in self.precise:
                if idx is not None:
                    idx.index.apply_batch(replica.id, replica.seq, step.events, epoch="sim")
        self._step(t, ri)

    def _tick(self, t: float) -> None:
        reports = [r.load_report(t) for r in self.replicas]
        for views in self.views:
            for v, rep in zip(views, reports, strict=True):
                v.load = rep

    def _sync(self) -> None:
        """Every gateway reads the others' in-flight counts (scheduled only with several gateways)."""
        for g, views in enumerate(self.views):
            for i, v in enumerate(views):
                remote = InflightCounts()
                for h in range(self.cfg.gateways):
                    if h != g:
                        remote.add(self.views[h][i].local)
                v.remote = remote

    def _share(self) -> None:
        """Deliver every gateway's queued approximate-index deltas to the others (one pub/sub round; scheduled only
        with several gateways)."""
        messages = []
        for p in self.policies:
            shared = getattr(getattr(p, "matcher", None), "shared", None)
            if shared is not None and shared.pending:
                messages.append(orjson.dumps({"gw": shared.gateway_id, "d": shared.pending}))
                shared.pending = []
        for p in self.policies:
            shared = getattr(getattr(p, "matcher", None), "shared", None)
            for m in messages:
                if shared is not None:
                    shared.apply(m)

    def run(self, reqs: Sequence[TraceRequest]) -> SimOutcome:
        wall0 = time.perf_counter()
        for r in reqs:
            self.push(r.arrival_s, "arrive", r)
        pending = len(reqs)
        end = (reqs[-1].arrival_s if reqs else 0.0) + self.cfg.drain_s
        # Periodic events: what each does at virtual time t, and how often it comes back.
        periodic: dict[str, tuple[Callable[[float], None], float]] = {"tick": (self._tick, self.cfg.report_interval)}
        if self.cfg.gateways > 1:
            periodic["sync"] = (lambda _t: self._sync(), self.cfg.sync_interval)
            periodic["share"] = (lambda _t: self._share(), self.cfg.share_interval)
        for kind in periodic:
            self.push(0.0, kind, None)
        t = 0.0
        while self.heap:
            t, _, kind, data = heapq.heappop(self.heap)
            if t > end:
                break
            if kind == "arrive":
                pending -= 1
                self._arrive(t, data)
            elif kind == "step":
                self._step_end(t, data)
            else:
                run, every = periodic[kind]
                run(t)
                if pending or self.live:
                    self.push(t + every, kind, None)
        for live in list(self.live.values()):
            self._finish(t, live, ok=False)
        self.live.clear()
        prompt = sum(r.prompt_tokens for r in self.replicas)
        cached = sum(r.cached_tokens for r in self.replicas)
        matcher = getattr(self.policies[0], "matcher", None)
        stats: dict[str, Any] = dict(matcher.stats()) if matcher is not None else {}
        return SimOutcome(sorted(self.results, key=lambda r: r.index), self.decision_s, self.decision_cpu_s,
                          cached / prompt if prompt else None, t, time.perf_counter() - wall0,
                          sum(r.preemptions for r in self.replicas), stats)
