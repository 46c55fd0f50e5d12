"""foresight.tracing: off and free by default, on from OTEL_* variables, spans exported over real OTLP/HTTP."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from foresight import tracing
from tests.observability.otlp_receiver import OTLPReceiver


@pytest.mark.parametrize("env,expected", [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
])
def test_exporters_follow_the_standard_variables(env: dict[str, str], expected: list[str]) -> None:
    assert tracing.requested_exporters(env) == expected


def test_off_by_default_imports_no_sdk_and_returns_shared_noops() -> None:
    code = """
import sys
from foresight import tracing
assert tracing.configure("x") is False and not tracing.enabled()
cm1, cm2 = tracing.span("a"), tracing.span("b", kind="server", attributes={"k": 1})
assert cm1 is cm2, "off: one shared no-op, nothing allocated per call"
with cm1 as s:
    s.set_attribute("k", 1); s.set_attributes({"a": 2}); s.add_event("e"); s.set_status_error("x")
    assert not s.is_recording()
h = {}
assert tracing.inject(h) == {} and tracing.extract({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None
tracing.record_phases(None, [("queue", 0.0, 1.0)])
leaked = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not leaked, leaked
print("ok")
"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.fixture
def receiver():
    r = OTLPReceiver().start()
    yield r
    r.stop()


def test_spans_cross_a_traceparent_and_export_over_otlp_http(receiver: OTLPReceiver,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    assert tracing.configure("unit-gateway", instance_id="g1") is True
    try:
        headers: dict[str, str] = {}
        with tracing.span("gateway.request", kind="server",
                          attributes={tracing.GEN_AI_REQUEST_MODEL: "tiny", tracing.ROUTE_POLICY: "foresight",
                                      tracing.ROUTE_PREDICTED_OUTPUT: None}) as root:
            root.set_attribute(tracing.RETRIES, 0)
            with tracing.span("gateway.upstream", kind="client", attributes={tracing.ATTEMPT: 1}):
                tracing.inject(headers)
        assert headers["traceparent"].startswith("00-")
        # The "replica side": a server span under the extracted context, plus retroactive engine phases.
        parent = tracing.extract({"traceparent": headers["traceparent"]})
        now = time.monotonic()
        with tracing.span("replica.request", kind="server", parent=parent):
            tracing.record_phases(None, [("queue", now - 0.3, now - 0.2), ("prefill", now - 0.2, now - 0.1),
                                         ("decode", now - 0.1, now), ("skipped", now, now - 1)],
                                  {tracing.REPLICA_ID: "r0"})
        with pytest.raises(ValueError):
            with tracing.span("failing"):
                raise ValueError("boom")
        assert receiver.wait_for(lambda spans: len(spans) >= 7), receiver.spans
    finally:
        tracing.shutdown()
    assert not tracing.enabled()
    by_name = {s.name: s for s in receiver.spans}
    assert set(by_name) == {"gateway.request", "gateway.upstream", "replica.request", "queue", "prefill", "decode",
                            "failing"}
    root, up, rep = by_name["gateway.request"], by_name["gateway.upstream"], by_name["replica.request"]
    assert root.service == "unit-gateway" and root.kind == "server" and root.parent_span_id == ""
    assert root.attributes == {"gen_ai.request.model": "tiny", "foresight.route.policy": "foresight",
                               "foresight.retries": 0}
    assert up.parent_span_id == root.span_id and up.kind == "client"
    assert rep.parent_span_id == up.span_id and rep.trace_id == root.trace_id
    assert headers["traceparent"].split("-")[1] == root.trace_id
    for phase in ("queue", "prefill", "decode"):
        s = by_name[phase]
        assert s.parent_span_id == rep.span_id and s.attributes == {"foresight.replica.id": "r0"}
        assert 0.09e9 < s.end_ns - s.start_ns < 0.11e9
    assert by_name["queue"].end_ns <= by_name["prefill"].start_ns + 1000
    assert by_name["failing"].status_code == 2  # STATUS_CODE_ERROR
