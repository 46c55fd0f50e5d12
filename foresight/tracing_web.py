"""Tracing hooks for the aiohttp servers (gateway, replicas) on top of ``foresight.tracing``.

- ``install(app, service, instance_id)`` configures tracing from ``OTEL_*`` and, only when it is on, adds a
  middleware that opens one SERVER span per API request (child of the caller's ``traceparent``), records the
  HTTP status and an ``foresight.outcome``, and flushes spans when the app stops. When tracing is off it adds
  nothing, so the request path is unchanged.
- ``request_span()`` is that request's span wherever the handler is (a contextvar), so deeper code annotates it
  without passing it around; outside a traced request it is the no-op span.
- The gateway helpers (``on_decision``, ``attempt_span``, ``on_routed``, ``on_outcome``) read the gateway's own
  objects by attribute (RequestView, Decision, Outcome, Replica) so this module imports nothing of the gateway.
  ``watch_engine`` + ``bind_engine_request`` emit the replica's queueing / prefill / decode spans from the
  engine's own timestamps.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Mapping
from typing import Any

from foresight import tracing

_request_span: contextvars.ContextVar[Any] = contextvars.ContextVar("foresight_request_span", default=tracing.NOOP_SPAN)
# Probes and scrapes (the gateway polls replicas' /v1/models and /load) would bury real requests in noise.
UNTRACED_PATHS = frozenset({"/health", "/ready", "/metrics", "/load", "/kv/blocks", "/v1/models"})


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (429, 503):
        return "rejected"
    if status in (502, 504):
        return "upstream_error"
    return "client_error" if status < 500 else "server_error"


def install(app: Any, service: str, instance_id: str | None = None) -> bool:
    """Turn tracing on for ``app`` when the environment asks for it; returns whether it is on."""
    if not tracing.configure(service, instance_id):
        return False
    from aiohttp import web

    @web.middleware
    async def trace_requests(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in UNTRACED_PATHS or request.path.startswith("/admin"):
            return await handler(request)
        attrs = {"http.request.method": request.method, "url.path": request.path, "foresight.service": service}
        with tracing.span(f"{request.method} {request.path}", kind="server", parent=tracing.extract(request.headers),
                          attributes=attrs) as span:
            token = _request_span.set(span)
            try:
                response = await handler(request)
            except web.HTTPException as e:
                span.set_attributes({tracing.HTTP_STATUS: e.status, tracing.OUTCOME: outcome_of(e.status)})
                raise
            except asyncio.CancelledError:
                span.set_attribute(tracing.OUTCOME, "client_disconnect")
                raise
            finally:
                _request_span.reset(token)
            span.set_attribute(tracing.HTTP_STATUS, response.status)
            if response.status >= 400:
                span.set_status_error(f"HTTP {response.status}")
            span.set_attribute(tracing.OUTCOME, outcome_of(response.status))
            return response

    async def flush(_app: web.Application) -> None:
        await asyncio.to_thread(tracing.flush)

    app.middlewares.insert(0, trace_requests)  # outermost: it sees the final status of every handler
    app.on_cleanup.append(flush)
    return True


def request_span() -> Any:
    return _request_span.get()


# -- gateway


def on_decision(rv: Any, decision: Any, policy: str) -> None:
    """The routing decision on the request span: model, policy, predicted output, ranking."""
    if not tracing.enabled():
        return
    span = request_span()
    span.set_attributes({
        tracing.GEN_AI_OPERATION: "chat" if rv.route == "chat" else "text_completion",
        tracing.GEN_AI_REQUEST_MODEL: rv.model, tracing.GEN_AI_REQUEST_MAX_TOKENS: rv.max_tokens,
        tracing.ROUTE_POLICY: policy, tracing.ROUTE_PREDICTED_OUTPUT: float(rv.output_p50),
        "foresight.route.predicted_output_tokens_p90": float(rv.output_p90),
        "foresight.request.estimated_prompt_tokens": rv.prompt_tokens,
        "foresight.route.ranked": ",".join(decision.ranked[:8]), "foresight.route.reason": decision.reason,
        "foresight.request.id": rv.request_id,
    })


def attempt_span(replica: Any, attempt: int) -> Any:
    """A CLIENT span around one upstream dispatch; ``traceparent`` sent upstream points at it."""
    if not tracing.enabled():
        return tracing.span("")  # the shared no-op
    return tracing.span(f"upstream {replica.id}", kind="client", attributes={
        tracing.ATTEMPT: attempt, tracing.REPLICA_ID: replica.id, tracing.SERVER_ADDRESS: replica.url})


def cost_terms(explanation: Mapping[str, Any] | None) -> dict[str, Any]:
    """The chosen replica's cost terms as ``foresight.route.cost.<term>`` (numbers only)."""
    return {tracing.ROUTE_COST_PREFIX + k: float(v) for k, v in (explanation or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def on_routed(rv: Any, decision: Any, replica_id: str, attempts: int) -> None:
    """The dispatch that answered: chosen replica, its cost terms, matched prefix blocks, retries."""
    if not tracing.enabled():
        return
    terms = decision.explanation.get(replica_id) or {}
    matched = rv.scratch.get("matched_blocks")
    if matched is None:
        matched = terms.get("matched_blocks", terms.get("matched"))
    attrs = {tracing.ROUTE_REPLICA: replica_id, tracing.RETRIES: attempts - 1, **cost_terms(terms)}
    if isinstance(matched, dict):  # per-replica matches: keep the chosen one's
        matched = matched.get(replica_id, 0)
    elif matched is None and "match" in terms:  # the policy matched, but the prompt had no full block to hash
        matched = 0
    if isinstance(matched, int | float):
        attrs[tracing.ROUTE_MATCHED_BLOCKS] = int(matched)
    request_span().set_attributes(attrs)


def on_outcome(outcome: Any) -> None:
    """One dispatch's outcome on its attempt span (the current span), its usage on the request span."""
    if not tracing.enabled():
        return
    current = tracing.current_span()
    current.set_attributes({tracing.HTTP_STATUS: outcome.status, tracing.ERROR_TYPE: outcome.error,
                            "foresight.attempt.ok": bool(outcome.ok)})
    if not outcome.ok:
        current.set_status_error(outcome.error or f"HTTP {outcome.status}")
    request_span().set_attributes({tracing.GEN_AI_INPUT_TOKENS: outcome.prompt_tokens,
                                   tracing.GEN_AI_OUTPUT_TOKENS: outcome.output_tokens,
                                   tracing.CACHED_TOKENS: outcome.cached_tokens})


# -- replica


class EnginePhases:
    """An engine listener (``replicas.engine.engine.EngineListener``) that emits each request's ``queue``,
    ``prefill`` and ``decode`` spans when it finishes, under the request span that ``bind`` captured.

    The engine loop serves every request at once, so it cannot hold per-request spans open; it only stamps times:
    arrival (``Request.arrival_time``), first admission (``on_admit``), first token (``Request.first_token_time``)
    and finish (``on_finish``). Registered only while tracing is on; unbound requests cost one dict operation.
    """

    def __init__(self) -> None:
        self._parents: dict[str, Any] = {}
        self._admitted: dict[str, float] = {}

    def bind(self, request_id: str) -> None:
        from opentelemetry import context

        self._parents[request_id] = context.get_current()

    def on_step(self, stats: Any) -> None:
        return None

    def on_admit(self, req: Any, cached_tokens: int) -> None:
        if req.request_id in self._parents:
            self._admitted.setdefault(req.request_id, time.monotonic())  # preemption re-admits: keep the first

    def on_finish(self, req: Any) -> None:
        parent = self._parents.pop(req.request_id, None)
        admitted = self._admitted.pop(req.request_id, None)
        if parent is None:
            return
        now = time.monotonic()
        attrs = {tracing.GEN_AI_INPUT_TOKENS: req.num_prompt_tokens, tracing.GEN_AI_OUTPUT_TOKENS: req.num_output_tokens,
                 tracing.CACHED_TOKENS: req.num_cached_tokens, "foresight.finish_reason": req.finish_reason}
        tracing.record_phases(parent, phases(req.arrival_time, admitted, req.first_token_time, now), attrs)


def phases(arrival: float, admitted: float | None, first_token: float | None,
           finished: float) -> list[tuple[str, float, float]]:
    """Queueing (arrival to first admission), prefill (to the first token), decode (to the finish); a phase that
    never started is left out."""
    out = []
    if admitted is not None:
        out.append(("queue", arrival, admitted))
        if first_token is not None:
            out.append(("prefill", admitted, first_token))
    if first_token is not None:
        out.append(("decode", first_token, finished))
    return out


_engine_phases: EnginePhases | None = None


def watch_engine(engine: Any) -> None:
    """Trace the engine's requests (call once at replica start; nothing happens while tracing is off)."""
    global _engine_phases
    if tracing.enabled():
        _engine_phases = EnginePhases()
        engine.listeners.append(_engine_phases)


def bind_engine_request(request_id: str) -> None:
    """Call in the request handler, right after adding the request to the engine."""
    if _engine_phases is not None:
        _engine_phases.bind(request_id)
