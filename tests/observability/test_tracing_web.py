"""foresight.tracing_web: the aiohttp middleware and the gateway/replica hooks, on real aiohttp servers, with the
gateway's own RequestView/Decision/Outcome objects, exported over OTLP/HTTP to a real receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from foresight import tracing, tracing_web
from gateway.routing.base import Decision, Outcome, RequestView
from replicas.engine.request import Request, SamplingParams
from tests.observability.otlp_receiver import OTLPReceiver


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OTLPReceiver]:
    r = OTLPReceiver().start()
    for name in ("OTEL_SERVICE_NAME", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    yield r
    tracing.shutdown()
    r.stop()


def test_install_adds_nothing_while_tracing_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    app = web.Application()
    before = (list(app.middlewares), list(app.on_cleanup))
    assert tracing_web.install(app, "svc") is False
    assert (list(app.middlewares), list(app.on_cleanup)) == before
    assert tracing_web.request_span() is tracing.NOOP_SPAN


@pytest.mark.parametrize("status,outcome", [(200, "ok"), (404, "client_error"), (429, "rejected"),
                                            (503, "rejected"), (502, "upstream_error"), (500, "server_error")])
def test_outcome_names(status: int, outcome: str) -> None:
    assert tracing_web.outcome_of(status) == outcome


async def test_gateway_and_replica_hooks_make_one_trace(receiver: OTLPReceiver) -> None:
    class Rep:
        id, url = "r1", "http://127.0.0.1:1"

    class Engine:  # the listener seam of replicas.engine.engine.Engine
        listeners: list = []

    async def upstream(request: web.Request) -> web.Response:
        req = Request("e1", [1, 2, 3], SamplingParams(), arrival_time=time.monotonic() - 0.2)
        tracing_web.bind_engine_request("e1")
        listener.on_admit(req, 0)
        await asyncio.sleep(0.05)
        req.output_token_ids.append(7)
        req.first_token_time = time.monotonic()
        await asyncio.sleep(0.05)
        req.finish_reason = "stop"
        listener.on_finish(req)
        listener.on_finish(Request("unbound", [1], SamplingParams()))  # not bound: no spans
        return web.json_response({"traceparent": request.headers.get("traceparent")})

    up_app = web.Application()
    up_app.router.add_post("/v1/chat/completions", upstream)
    assert tracing_web.install(up_app, "unit")
    tracing_web.watch_engine(Engine)
    [listener] = Engine.listeners
    up = TestServer(up_app)
    await up.start_server()

    async def chat(request: web.Request) -> web.Response:
        rv = RequestView("req-1", "tiny", "chat", "hello", {}, None, 12, 30.0, 80.0, max_tokens=64)
        rv.scratch["matched_blocks"] = 3
        decision = Decision(["r1", "r2"], {"r1": {"queue_s": 0.5, "prefill_s": 0.25, "total": 0.75}}, "cost")
        tracing_web.on_decision(rv, decision, "foresight")
        with tracing_web.attempt_span(Rep(), 1):
            headers = tracing.inject({})
            async with aiohttp.ClientSession() as s, s.post(str(up.make_url("/v1/chat/completions")),
                                                              headers=headers) as r:
                seen = (await r.json())["traceparent"]
            tracing_web.on_outcome(Outcome(ok=True, status=200, output_tokens=7, prompt_tokens=12, cached_tokens=0))
        tracing_web.on_routed(rv, decision, "r1", attempts=1)
        return web.json_response({"sent": headers["traceparent"], "seen": seen})

    async def bad(_request: web.Request) -> web.Response:
        return web.json_response({"error": {}}, status=404)

    gw_app = web.Application()
    gw_app.router.add_post("/v1/chat/completions", chat)
    gw_app.router.add_post("/v1/bad", bad)
    gw_app.router.add_get("/health", bad)
    assert tracing_web.install(gw_app, "unit")
    gw = TestServer(gw_app)
    await gw.start_server()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(str(gw.make_url("/v1/chat/completions"))) as r:
                body = await r.json()
            async with s.post(str(gw.make_url("/v1/bad"))) as r:
                assert r.status == 404
            async with s.get(str(gw.make_url("/health"))) as r:
                assert r.status == 404
        assert body["sent"] == body["seen"]
        assert receiver.wait_for(lambda spans: len(spans) >= 7, 30), [x.name for x in receiver.spans]
    finally:
        await gw.close()
        await up.close()
    spans = {s.name: s for s in receiver.spans}
    assert "GET /health" not in spans, "health probes are not traced"
    att = spans["upstream r1"]
    rep = next(s for s in receiver.spans if s.name == "POST /v1/chat/completions" and s.parent_span_id)
    req = next(s for s in receiver.spans if s.name == "POST /v1/chat/completions" and not s.parent_span_id)
    assert att.parent_span_id == req.span_id and rep.parent_span_id == att.span_id
    assert body["sent"].split("-")[2] == att.span_id
    a = req.attributes
    assert a["gen_ai.request.model"] == "tiny" and a["gen_ai.operation.name"] == "chat"
    assert a["foresight.route.policy"] == "foresight" and a["foresight.route.replica"] == "r1"
    assert a["foresight.route.predicted_output_tokens"] == 30.0 and a["foresight.route.matched_prefix_blocks"] == 3
    assert a["foresight.route.cost.queue_s"] == 0.5 and a["foresight.route.cost.total"] == 0.75
    assert a["foresight.retries"] == 0 and a["foresight.outcome"] == "ok"
    assert a["gen_ai.usage.input_tokens"] == 12 and a["gen_ai.usage.output_tokens"] == 7
    assert att.kind == "client" and att.attributes["http.response.status_code"] == 200
    for phase in ("queue", "prefill", "decode"):
        assert spans[phase].parent_span_id == rep.span_id and spans[phase].trace_id == req.trace_id
        assert spans[phase].attributes["gen_ai.usage.output_tokens"] == 1
    q, p, d = spans["queue"], spans["prefill"], spans["decode"]
    assert q.end_ns - q.start_ns > 0.15e9 and q.end_ns <= p.start_ns + 1000 and p.end_ns <= d.start_ns + 1000
    assert 0.03e9 < p.end_ns - p.start_ns and 0.03e9 < d.end_ns - d.start_ns
    bad_span = spans["POST /v1/bad"]
    assert bad_span.attributes["foresight.outcome"] == "client_error" and bad_span.status_code == 2


@pytest.mark.parametrize("admitted,first,expected", [
    (1.0, 2.0, ["queue", "prefill", "decode"]),
    (1.0, None, ["queue"]),  # aborted before its first token
    (None, None, []),  # never admitted
])
def test_phases_leave_out_what_never_started(admitted, first, expected) -> None:
    assert [p[0] for p in tracing_web.phases(0.0, admitted, first, 3.0)] == expected
