"""OpenTelemetry tracing shared by the gateway and the replicas: off by default, free when off.

Contract:
- ``configure(service_name)`` is called once at process start. Tracing turns on only when the standard
  environment asks for it: ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``), or
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; ``OTEL_SDK_DISABLED=true`` or
  ``OTEL_TRACES_EXPORTER=none`` keeps it off. Spans go over OTLP/HTTP (protobuf) in batches; the exporter, the
  batch processor and the sampler read their own ``OTEL_*`` variables (endpoint, headers, timeout,
  ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_TRACES_SAMPLER``). ``OTEL_SERVICE_NAME`` overrides ``service_name``.
- While off, no SDK module is imported and every helper returns at once: ``span()`` hands back one shared no-op
  context manager, ``inject`` leaves the headers alone, ``extract`` returns None. Call sites that would build
  costly attribute values guard them with ``enabled()``.
- Context crosses processes as W3C ``traceparent`` (``inject`` on the way out, ``extract`` on the way in).
- Attribute names follow the OpenTelemetry GenAI semantic conventions where one exists (``GEN_AI_*``) and use
  the ``foresight.*`` namespace for routing decisions (the constants below).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# GenAI semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/).
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
# General semantic conventions used on upstream attempts.
SERVER_ADDRESS = "server.address"
HTTP_STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"
# Foresight's own: the routing decision and its outcome.
ROUTE_POLICY = "foresight.route.policy"
ROUTE_REPLICA = "foresight.route.replica"
ROUTE_PREDICTED_OUTPUT = "foresight.route.predicted_output_tokens"
ROUTE_MATCHED_BLOCKS = "foresight.route.matched_prefix_blocks"
ROUTE_COST_PREFIX = "foresight.route.cost."  # + term name: queue_s, prefill_s, kv_penalty_s, total_s
RETRIES = "foresight.retries"
ATTEMPT = "foresight.attempt"
OUTCOME = "foresight.outcome"
REPLICA_ID = "foresight.replica.id"
CACHED_TOKENS = "foresight.replica.cached_prompt_tokens"

_tracer: Any = None  # an SDK Tracer while on; None while off (the hot-path check)
_provider: Any = None
_KINDS = ("internal", "server", "client")


class _NoopSpan:
    """Stands in for a span while tracing is off; every method does nothing."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        return None

    def record_exception(self, exc: BaseException) -> None:
        return None

    def set_status_error(self, description: str) -> None:
        return None

    def is_recording(self) -> bool:
        return False


class _NoopSpanContext:
    __slots__ = ()

    def __enter__(self) -> _NoopSpan:
        return NOOP_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


NOOP_SPAN = _NoopSpan()
_NOOP_CM = _NoopSpanContext()


def requested_exporters(environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the environment asks for; empty means tracing stays off."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in ("1", "true", "yes", "on"):
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        names = ["otlp"]
    return [n for n in names if n != "none"]


def configure(service_name: str, instance_id: str | None = None) -> bool:
    """Turn tracing on when the environment asks for it; returns whether it is on. Safe to call again."""
    global _tracer, _provider
    if _tracer is not None:
        return True
    exporters = requested_exporters()
    if not exporters:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attrs: dict[str, str] = {}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = service_name
    if instance_id:
        attrs["service.instance.id"] = instance_id
    provider = TracerProvider(resource=Resource.create(attrs))
    for name in exporters:
        if name == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            if protocol != "http/protobuf":
                log.warning("OTLP protocol %r is not supported here; exporting over http/protobuf", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)
    _provider = provider
    _tracer = provider.get_tracer("foresight")
    log.info("tracing on: service=%s exporters=%s", attrs.get("service.name", "(OTEL_SERVICE_NAME)"), exporters)
    return True


def shutdown() -> None:
    """Flush what is buffered and turn tracing off (idempotent)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def flush(timeout_ms: int = 5000) -> None:
    """Export what is buffered now (blocking; call it from a worker thread on an event loop)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def current_span() -> Any:
    """The current span (e.g. the upstream attempt around a dispatch), or the no-op span while off."""
    if _tracer is None:
        return NOOP_SPAN
    from opentelemetry import trace

    return _SpanHandle(trace.get_current_span())


def span(name: str, *, kind: str = "internal", parent: Any = None, attributes: Mapping[str, Any] | None = None):
    """A context manager around a new current span (a child of ``parent`` or of the current span).

    ``parent`` is a context from ``extract``. An exception leaving the block is recorded and marks the span
    as an error. While tracing is off this returns a shared no-op whose span ignores everything.
    """
    if _tracer is None:
        return _NOOP_CM
    return _live_span(name, kind, parent, attributes)


@contextmanager
def _live_span(name: str, kind: str, parent: Any, attributes: Mapping[str, Any] | None) -> Iterator[Any]:
    from opentelemetry.trace import SpanKind

    span_kind = {"internal": SpanKind.INTERNAL, "server": SpanKind.SERVER, "client": SpanKind.CLIENT}[kind]
    with _tracer.start_as_current_span(name, context=parent, kind=span_kind,
                                       attributes=_clean(attributes)) as live:
        yield _SpanHandle(live)


class _SpanHandle:
    """The live span with the same small surface as the no-op, so call sites never branch."""

    __slots__ = ("_span",)

    def __init__(self, live: Any) -> None:
        self._span = live

    def set_attribute(self, key: str, value: Any) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._span.set_attributes(_clean(attributes))

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self._span.add_event(name, _clean(attributes))

    def record_exception(self, exc: BaseException) -> None:
        self._span.record_exception(exc)

    def set_status_error(self, description: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, description))

    def is_recording(self) -> bool:
        return self._span.is_recording()


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """OpenTelemetry rejects None values; drop them so call sites can pass optional fields as they are."""
    return {k: v for k, v in (attributes or {}).items() if v is not None}


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add ``traceparent`` (and ``tracestate``) of the current span to outgoing headers; no-op while off."""
    if _tracer is not None:
        from opentelemetry.propagate import inject as _inject

        _inject(headers)
    return headers


def extract(headers: Mapping[str, str]) -> Any:
    """The remote parent context carried by incoming headers (aiohttp's are case-insensitive), or None."""
    if _tracer is None or "traceparent" not in headers:
        return None
    from opentelemetry.propagate import extract as _extract

    return _extract(headers)


def record_phases(parent: Any, phases: list[tuple[str, float, float]],
                  attributes: Mapping[str, Any] | None = None) -> None:
    """Emit finished child spans of ``parent`` (a context, or None for the current span) for phases that were
    timed with ``time.monotonic()`` elsewhere (the engine loop times queueing, prefill and decode of many
    requests at once, so it cannot hold a span per request open). Each phase is (name, start, end); phases
    with ``end < start`` are skipped."""
    if _tracer is None:
        return
    offset_ns = time.time_ns() - time.monotonic_ns()
    attrs = _clean(attributes)
    for name, start, end in phases:
        if end < start:
            continue
        live = _tracer.start_span(name, context=parent, attributes=attrs, start_time=offset_ns + int(start * 1e9))
        live.end(end_time=offset_ns + int(end * 1e9))
