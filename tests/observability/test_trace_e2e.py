"""One trace across processes: a request through a real gateway to a real (sim) replica, both started with only the
standard OTEL_* variables, exported over OTLP/HTTP to a receiver this test runs; the gateway's request span, its
upstream attempt and the replica's request, queue, prefill and decode spans share one trace id and carry the
routing and GenAI attributes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.helpers.procs import ProcessManager, foresight_cmd, free_port
from tests.observability.otlp_receiver import OTLPReceiver, ReceivedSpan

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    r = OTLPReceiver().start()
    yield r
    r.stop()


def otel_env(receiver: OTLPReceiver, service: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": service,
            "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_TRACES_EXPORTER": "otlp"}


def by_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def complete_trace(spans: list[ReceivedSpan]) -> str | None:
    """The trace id of a gateway request whose replica phases all arrived, if any."""
    for root in spans:
        if root.service == "foresight-gateway" and root.kind == "server" and root.attributes.get(
                "foresight.route.replica"):
            names = {s.name for s in by_trace(spans, root.trace_id) if s.service == "foresight-replica"}
            if {"queue", "prefill", "decode"} <= names:
                return root.trace_id
    return None


def test_one_trace_joins_gateway_and_replica(procs: ProcessManager, receiver: OTLPReceiver,
                                              tiny_model_dir: Path) -> None:
    rport, gport = free_port(), free_port()
    replica = procs.spawn(foresight_cmd("replica", "--runner", "sim", "--model", str(tiny_model_dir),
                                        "--port", str(rport), "--replica-id", "traced-replica"), rport,
                          env=otel_env(receiver, "foresight-replica"))
    procs.spawn(foresight_cmd("gateway", "--port", str(gport), "--replica", replica.url, "--policy", "foresight"),
                gport, env=otel_env(receiver, "foresight-gateway"))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gport}/v1", api_key="unused", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(
        model=model, max_tokens=6, messages=[{"role": "system", "content": "Be brief. " * 12},
                                             {"role": "user", "content": "Trace me."}])
    assert reply.usage is not None
    assert receiver.wait_for(lambda spans: complete_trace(spans) is not None, 60), \
        sorted({(s.service, s.name) for s in receiver.spans})
    trace = by_trace(receiver.spans, complete_trace(receiver.spans) or "")
    gw = [s for s in trace if s.service == "foresight-gateway"]
    rep = [s for s in trace if s.service == "foresight-replica"]
    [root] = [s for s in gw if s.kind == "server"]
    [attempt] = [s for s in gw if s.kind == "client"]
    [server] = [s for s in rep if s.kind == "server"]
    assert root.parent_span_id == "" and attempt.parent_span_id == root.span_id
    assert server.parent_span_id == attempt.span_id, "the replica continued the gateway's traceparent"
    phases = {s.name: s for s in rep if s.name in ("queue", "prefill", "decode")}
    assert all(p.parent_span_id == server.span_id for p in phases.values())
    assert phases["queue"].end_ns <= phases["prefill"].start_ns + 1000 <= phases["decode"].start_ns + 2000
    a = root.attributes
    assert a["gen_ai.request.model"] == model and a["gen_ai.operation.name"] == "chat"
    assert a["foresight.route.policy"] == "foresight"
    assert a["foresight.route.replica"] and a["foresight.retries"] == 0 and a["foresight.outcome"] == "ok"
    assert a["foresight.route.predicted_output_tokens"] > 0
    assert "foresight.route.matched_prefix_blocks" in a
    assert {"foresight.route.cost.queue_s", "foresight.route.cost.prefill_s", "foresight.route.cost.ttft_s"} <= set(a)
    assert a["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert attempt.attributes["foresight.attempt"] == 1 and attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["server.address"] == replica.url
    assert phases["decode"].attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
