"""The upstream call: pick replicas in ranked order, dispatch, relay the answer, retry what can be retried.

Contract:
- The client's body bytes go upstream untouched; only a small allow-list of headers is forwarded (never the
  client's ``Authorization``, never hop-by-hop headers).
- Retries (on another replica, after a jittered exponential backoff, at most ``max_attempts`` dispatches within
  ``retry_deadline``): refused or failed connections, upstream 500/502/503/504, an upstream that dies before its
  first body byte, and (non-streaming) one that dies before its full answer, since nothing reached the client yet.
  Never after bytes reached the client: a stream that breaks later ends with an SSE error event and ``[DONE]``
  (DESIGN.md 6) through ``stream_failed``, the seam for mid-stream continuation.
- Accounting (``Ticket``) and the policy hooks run exactly once per dispatch, whatever ends it (success, upstream
  error, client disconnect: the handler is cancelled and the upstream connection is closed, which aborts the
  request on the replica).
- Passive outlier detection: a refused connection trips the replica's breaker at once, other failures count toward
  its threshold, a success resets it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import orjson
from aiohttp import web

from foresight import tracing, tracing_web
from foresight.errors import APIError, sse_error_event
from gateway.accounting import Ticket
from gateway.estimator import OutputEstimator
from gateway.metrics import GatewayMetrics
from gateway.registry import Registry, Replica
from gateway.routing.base import Decision, Outcome, ReplicaView, RequestView, RoutingPolicy
from gateway.sticky import StickyRing
from gateway.stream_state import EventRecorder
from gateway.upstream import UpstreamClient, UpstreamConnectError, UpstreamDisconnected

if TYPE_CHECKING:
    from gateway.continuation import Continuation
    from gateway.overload import OverloadShedder

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({500, 502, 503, 504})
FORWARD_HEADERS = ("Content-Type", "Accept", "X-Request-Id", "X-Sim-Output-Tokens", "X-Session-Id", "traceparent",
                   "tracestate")
PRIORITY_HEADER = "X-Foresight-Priority"  # replicas/protocol.py reads it (admission order, lower first)
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class Retryable(Exception):
    """The dispatch failed before any byte reached the client; another replica may be tried."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(slots=True)
class ProxyConfig:
    max_attempts: int = 3
    retry_deadline: float = 30.0
    backoff_base: float = 0.01
    backoff_max: float = 0.5
    connect_timeout: float = 2.0
    read_timeout: float = 600.0
    per_replica_limit: int = 256
    policy_name: str = "round_robin"
    upstream_api_key: str | None = None


def usage_from_sse_tail(tail: bytes) -> dict | None:
    """The ``usage`` object of the last SSE event that has one (the final chunk with include_usage)."""
    idx = tail.rfind(b'"usage"')
    if idx < 0:
        return None
    start = tail.rfind(b"data:", 0, idx)
    end = tail.find(b"\n", idx)
    try:
        obj = orjson.loads(tail[start + 5: end if end >= 0 else None])
    except orjson.JSONDecodeError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None


class Proxy:
    def __init__(self, registry: Registry, policy: RoutingPolicy, session: aiohttp.ClientSession,
                 metrics: GatewayMetrics, estimator: OutputEstimator, config: ProxyConfig,
                 sticky: StickyRing | None = None, on_slot_free: Callable[[], None] | None = None) -> None:
        self.registry = registry
        self.policy = policy
        self.session = session
        self.metrics = metrics
        self.estimator = estimator
        self.cfg = config
        self.sticky = sticky or StickyRing()
        self.on_slot_free = on_slot_free
        self.continuation: Continuation | None = None  # mid-stream continuation (gateway.reliability)
        self.shedder: OverloadShedder | None = None  # work-based load shedding (gateway.reliability)
        self.upstream = UpstreamClient()  # non-streaming calls; streams use the aiohttp session
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout,
                                             sock_read=config.read_timeout)

    # -- candidates and ranking
    def candidates(self, model: str) -> list[ReplicaView]:
        limit = self.cfg.per_replica_limit
        return [r.view for r in self.registry.replicas.values()
                if r.local.requests < limit and self.registry.serves(r, model) and r.routable()]

    def has_capacity(self, model: str) -> bool:
        limit = self.cfg.per_replica_limit
        return any(r.local.requests < limit and self.registry.serves(r, model) and r.routable()
                   for r in self.registry.replicas.values())

    def any_routable(self, model: str) -> bool:
        return any(self.registry.serves(r, model) and r.routable() for r in self.registry.replicas.values())

    def rank(self, rv: RequestView) -> Decision:
        candidates = self.candidates(rv.model)
        if not candidates:
            raise APIError(503, f"no healthy replica can take a request for model '{rv.model}' now",
                           code="no_healthy_replica", retry_after=1)
        if self.shedder is not None:
            # 503 when every replica would only queue it
            candidates = self.shedder.gate(rv, candidates, self.policy.ranks_by_wait)
        decision = self.policy.rank(rv, candidates)
        self.policy.admit(rv)  # a policy's own admission rule (foresight's reject_ttft), after it has ranked
        if rv.session_id:
            pinned = self.sticky.pick(rv.session_id, candidates, list(self.registry.replicas))
            if pinned is not None and decision.ranked and decision.ranked[0] != pinned:
                decision.ranked = [pinned, *(r for r in decision.ranked if r != pinned)]
                decision.reason = f"sticky({decision.reason})"
        return decision

    # -- dispatch with retries
    async def forward(self, request: web.Request, rv: RequestView, raw: bytes, stream: bool,
                      debug: bool = False) -> web.StreamResponse:
        t0 = time.monotonic()
        m = self.metrics
        decision = self.rank(rv)
        tracing_web.on_decision(rv, decision, self.cfg.policy_name)
        deadline = t0 + self.cfg.retry_deadline
        attempts = 0
        last: Retryable | None = None
        for rid in decision.ranked:
            if attempts >= self.cfg.max_attempts or time.monotonic() >= deadline:
                break
            replica = self.registry.get(rid)
            if replica is None or replica.view.draining or not replica.breaker.acquire():
                continue
            if attempts:
                delay = min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (attempts - 1))
                await asyncio.sleep(random.uniform(0, delay) + delay / 2)
                m.child(m.retries, last.reason.split(":")[0] if last else "unknown").inc()
            attempts += 1
            m.child(m.decisions, self.cfg.policy_name, rid).inc()
            try:
                with tracing_web.attempt_span(replica, attempts):
                    resp = await self._dispatch(request, rv, raw, stream, replica, decision if debug else None, t0)
            except Retryable as e:
                log.info("request %s: replica %s failed before first byte (%s)", rv.request_id, rid, e.reason)
                last = e
                continue
            tracing_web.on_routed(rv, decision, rid, attempts)
            return resp
        if last is None:
            raise APIError(503, "no replica accepted the request", code="no_healthy_replica", retry_after=1)
        if time.monotonic() >= deadline:
            raise APIError(504, f"upstream did not answer within {self.cfg.retry_deadline:g}s "
                                f"({attempts} attempts; last: {last.reason})", code="upstream_timeout")
        raise APIError(502, f"upstream failed after {attempts} attempts (last: {last.reason})",
                       code="upstream_error")

    def _headers(self, request: web.Request, rv: RequestView | None = None) -> dict[str, str]:
        h = request.headers
        out = {k: h[k] for k in FORWARD_HEADERS if k in h}
        # The policy's scheduling hint (never the client's: that header is not forwarded).
        priority = rv.scratch.get("priority") if rv is not None else None
        if priority is not None:
            out[PRIORITY_HEADER] = str(priority)
        if self.cfg.upstream_api_key:
            out["Authorization"] = "Bearer " + self.cfg.upstream_api_key
        tracing.inject(out)  # traceparent of the upstream attempt span (no-op while tracing is off)
        return out

    async def _dispatch(self, request: web.Request, rv: RequestView, raw: bytes, stream: bool, replica: Replica,
                        decision: Decision | None, t0: float) -> web.StreamResponse:
        prefill = float(rv.scratch.get("uncached_prompt_tokens", rv.prompt_tokens))
        ticket = Ticket(replica.local, prefill, rv.output_p50, self.on_slot_free)
        gauge = self.metrics.child(self.metrics.inflight, replica.id)
        gauge.set(replica.local.requests)
        self.policy.on_dispatch(rv, replica.id)
        outcome = Outcome(ok=False)
        try:
            extra = {"X-Foresight-Replica": replica.id}
            if decision is not None:
                extra["X-Foresight-Route"] = decision.header()
            if stream:
                return await self._stream(request, rv, raw, replica, ticket, outcome, extra, t0)
            return await self._unary(request, rv, raw, replica, ticket, outcome, extra, t0)
        except asyncio.CancelledError:
            outcome.error = "client_disconnect"
            raise
        finally:
            ticket.release()
            gauge.set(replica.local.requests)
            self.policy.on_complete(rv, replica.id, outcome)
            tracing_web.on_outcome(outcome)
            if outcome.ok and outcome.output_tokens is not None:
                self.estimator.observe(rv.model, rv.body, rv.prompt_text, rv.prompt_tokens, outcome.output_tokens)
                self.metrics.observe_prediction(rv.model, rv.output_p50, rv.output_p90, outcome.output_tokens)

    def _failed(self, replica: Replica, e: BaseException, outcome: Outcome) -> Retryable:
        if isinstance(e, aiohttp.ClientConnectorError | UpstreamConnectError):
            replica.breaker.trip()  # nothing listens there: eject now, the prober re-admits it
            reason = "connect"
        else:
            replica.breaker.record_failure()
            reason = "timeout" if isinstance(e, TimeoutError) else "upstream_disconnect"
        outcome.error = f"{reason}: {type(e).__name__}"
        return Retryable(f"{reason}: {type(e).__name__}: {e}")

    async def _unary(self, request: web.Request, rv: RequestView, raw: bytes, replica: Replica, ticket: Ticket,
                     outcome: Outcome, extra: dict[str, str], t0: float) -> web.Response:
        try:
            status, headers, data = await self.upstream.request(
                replica.url, PATHS[rv.route], self._headers(request, rv), raw,
                connect_timeout=self.cfg.connect_timeout, read_timeout=self.cfg.read_timeout)
        except (UpstreamConnectError, UpstreamDisconnected, TimeoutError, OSError) as e:
            raise self._failed(replica, e, outcome) from e
        if status in RETRY_STATUSES:
            replica.breaker.record_failure()
            outcome.status, outcome.error = status, f"upstream {status}"
            raise Retryable(f"status: upstream answered {status}", status)
        ticket.first_token()
        self.policy.on_first_token(rv, replica.id)
        replica.breaker.record_success()
        elapsed = time.monotonic() - t0
        m = self.metrics
        m.child(m.ttft, rv.route).observe(elapsed)
        m.child(m.e2e, rv.route).observe(elapsed)
        outcome.ok, outcome.status, outcome.first_token = status == 200, status, True
        if status == 200 and b'"usage"' in data:
            try:
                usage = orjson.loads(data).get("usage")
            except (orjson.JSONDecodeError, AttributeError):
                usage = None
            self._usage(rv, usage, outcome)
        m.count_request(rv.route, status, replica.id)
        return web.Response(status=status, body=data,
                            headers={"Content-Type": headers.get("content-type", "application/json"), **extra})

    def _usage(self, rv: RequestView, usage: object, outcome: Outcome) -> None:
        if not isinstance(usage, dict):
            return
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(pt, int):
            outcome.prompt_tokens = pt
            self.metrics.child(self.metrics.tokens_in, rv.model).inc(pt)
        if isinstance(ct, int):
            outcome.output_tokens = ct
            self.metrics.child(self.metrics.tokens_out, rv.model).inc(ct)
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            outcome.cached_tokens = details["cached_tokens"]

    async def _stream(self, request: web.Request, rv: RequestView, raw: bytes, replica: Replica, ticket: Ticket,
                      outcome: Outcome, extra: dict[str, str], t0: float) -> web.StreamResponse:
        up: aiohttp.ClientResponse | None = None
        resp: web.StreamResponse | None = None
        clean = False
        try:
            try:
                up = await self.session.post(replica.url + PATHS[rv.route], data=raw,
                                             headers=self._headers(request, rv), timeout=self.timeout)
                if up.status in RETRY_STATUSES:
                    replica.breaker.record_failure()
                    outcome.status, outcome.error = up.status, f"upstream {up.status}"
                    raise Retryable(f"status: upstream answered {up.status}", up.status)
                if up.status != 200:  # a client error from the replica: pass it through as is
                    data = await up.read()
                    clean = True
                    outcome.status = up.status
                    self.metrics.count_request(rv.route, up.status, replica.id)
                    return web.Response(status=up.status, body=data, headers={
                        "Content-Type": up.headers.get("Content-Type", "application/json"), **extra})
                first = await up.content.readany()
                if not first:
                    replica.breaker.record_failure()
                    raise Retryable("upstream_disconnect: stream ended before its first byte")
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                raise self._failed(replica, e, outcome) from e
            now = time.monotonic()
            ticket.first_token()
            self.policy.on_first_token(rv, replica.id)
            replica.breaker.record_success()
            outcome.first_token = True
            self.metrics.child(self.metrics.ttft, rv.route).observe(now - t0)
            resp = web.StreamResponse(status=200, headers={
                "Content-Type": up.headers.get("Content-Type", "text/event-stream"), "Cache-Control": "no-cache",
                **extra})
            await resp.prepare(request)
            recorder = EventRecorder()  # whole SSE events only, remembered for a continuation
            data = recorder.feed(first)
            if data:
                await resp.write(data)
            tail = first[-8192:]
            itl = self.metrics.child(self.metrics.itl, rv.route)
            broken: BaseException | None = None
            while True:
                try:
                    chunk = await up.content.readany()
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    broken = e
                    break
                if not chunk:
                    break
                t = time.monotonic()
                itl.observe(t - now)
                now = t
                data = recorder.feed(chunk)
                if data:
                    await resp.write(data)  # waits while the client's socket buffer is full (backpressure)
                tail = (tail + chunk)[-8192:]
            if broken is not None or b"[DONE]" not in tail:
                await self.stream_failed(rv, replica, resp, broken, outcome, request, recorder)
            else:
                rest = recorder.rest()
                if rest:
                    await resp.write(rest)
                clean = True
                outcome.ok, outcome.status = True, 200
                self._usage(rv, usage_from_sse_tail(tail), outcome)
            self.metrics.child(self.metrics.e2e, rv.route).observe(time.monotonic() - t0)
            self.metrics.count_request(rv.route, 200, replica.id)
            await resp.write_eof()
            return resp
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            # The client went away while we wrote (before the connection-lost callback could cancel this
            # handler). Its answer has started, so there is nothing to send: return the response, which aiohttp
            # finishes quietly; raising would log a server error with a traceback for every such client.
            if not clean:
                outcome.error = "client_disconnect"
            if resp is not None and resp.prepared:
                return resp
            raise
        finally:
            if up is not None:
                if clean:
                    up.release()  # fully read: the connection goes back to the keep-alive pool
                else:
                    up.close()  # abort: the replica sees the disconnect and frees the request

    async def stream_failed(self, rv: RequestView, replica: Replica, resp: web.StreamResponse,
                            error: BaseException | None, outcome: Outcome, request: web.Request | None = None,
                            recorder: EventRecorder | None = None) -> None:
        """A stream broke after bytes reached the client: end it with an error event and ``[DONE]``.

        This is the seam for mid-stream continuation (re-sending the prompt plus the text so far elsewhere).
        """
        replica.breaker.record_failure()
        self.metrics.stream_errors.inc()
        why = f"{type(error).__name__}" if error is not None else "stream ended without [DONE]"
        outcome.error = f"mid_stream: {why}"
        log.warning("request %s: replica %s failed mid-stream (%s)", rv.request_id, replica.id, why)
        if self.continuation is not None and request is not None and recorder is not None \
                and await self.continuation.resume(request, rv, replica, resp, recorder):
            return
        await resp.write(sse_error_event(APIError(502, f"the upstream replica failed mid-stream ({why})",
                                                  code="upstream_stream_error")))
