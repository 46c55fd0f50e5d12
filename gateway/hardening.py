"""Hostile-client limits around the gateway's handlers: sizes, rates, slow and idle clients, headers, log secrets.

Contract (every refusal is an OpenAI-style error from ``foresight.errors``, never a 5xx, never a crash):
- Request line and header sizes: aiohttp's parser limits (``handler_args``: line and field at most
  ``max_header_bytes``, at most ``max_headers`` fields) answer 400 before any handler runs.
- Slow clients: a connection must deliver a complete request head within ``header_timeout`` of opening (or of its
  previous response): aiohttp's keep-alive timer closes it otherwise (this is the slowloris defence). A body must
  arrive within ``body_timeout`` (408).
- Idle streams: a streaming response whose client stops reading (its socket buffer stays full, no progress) for
  ``idle_timeout`` is aborted, which cancels the upstream request and frees the replica (``IdleWatch``).
- Rates: at most ``conn_rate`` requests per second (burst ``conn_burst``) per connection (429 with
  ``Retry-After``); per API key, ``gateway.ratelimit`` enforces each key's own rate, shared across gateways.
- Headers: hop-by-hop headers never travel upstream (the proxy forwards an allow-list) and neither does a header the
  client names in ``Connection`` (RFC 9110 7.6.1), which an allow-list alone would let through; ``X-Request-Id``
  must be short printable ASCII (it is logged and forwarded).
- No client-controlled upstream: upstream URLs come only from the registry (flags, self-registration, admin API
  behind its token); the request target's path, host and absolute-form URL never select an upstream.
- Secrets in logs: ``RedactSecrets`` rewrites bearer tokens, ``sk-`` keys, ``api-key``/``token``/``password``
  values and credentials in URLs to ``***`` in every record that reaches the root handlers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from foresight.errors import APIError, http_response

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class HardeningConfig:
    max_header_bytes: int = 16384
    max_headers: int = 64
    header_timeout: float = 30.0  # also how long an idle keep-alive connection is kept
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    # Far above any single honest connection (a load balancer multiplexes many clients over a few), far below a
    # flood: per-key limits (gateway/ratelimit.py) are the finer control.
    conn_rate: float = 1000.0
    conn_burst: float = 2000.0


def handler_args(cfg: HardeningConfig) -> dict[str, object]:
    """aiohttp ``RequestHandler`` settings: parser limits and the head/keep-alive deadline."""
    return {"max_line_size": cfg.max_header_bytes, "max_field_size": cfg.max_header_bytes,
            "max_headers": cfg.max_headers, "keepalive_timeout": cfg.header_timeout}


class ConnectionRates:
    """A token bucket per client connection (keyed by peer address and port, pruned when idle)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: dict[object, list[float]] = {}  # key -> [tokens, updated]
        self._pruned = clock()

    def take(self, key: object) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = [self.burst, now]
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if now - self._pruned > 30.0:
            self._prune(now)
        if b[0] < 1.0:
            raise APIError(429, "too many requests on this connection", code="connection_rate_exceeded",
                           retry_after=(1.0 - b[0]) / self.rate)
        b[0] -= 1.0

    def _prune(self, now: float) -> None:
        self._pruned = now
        self.buckets = {k: b for k, b in self.buckets.items() if now - b[1] < 30.0}


class IdleWatch:
    """Aborts streaming responses whose client stopped reading for ``timeout`` seconds (checked every second)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.watched: dict[asyncio.BaseTransport, list[float]] = {}  # transport -> [buffered bytes, since]
        self._task: asyncio.Task[None] | None = None

    def watch(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is None or self.timeout <= 0:
            return
        self.watched[transport] = [0.0, time.monotonic()]
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="idle-stream-watch")

    def unwatch(self, transport: asyncio.BaseTransport | None) -> None:
        self.watched.pop(transport, None)  # type: ignore[arg-type]

    def check(self, now: float) -> int:
        """Close transports stuck with a full buffer for too long; returns how many were closed."""
        closed = 0
        for transport, state in list(self.watched.items()):
            size = float(getattr(transport, "get_write_buffer_size", lambda: 0)())
            if transport.is_closing():
                self.watched.pop(transport, None)
            elif size == 0 or size != state[0]:
                state[0], state[1] = size, now  # draining or empty: the client is reading
            elif now - state[1] > self.timeout:
                logging.getLogger(__name__).warning("closing a stream whose client stopped reading for %.0fs",
                                                    now - state[1])
                transport.abort()  # type: ignore[attr-defined]
                self.watched.pop(transport, None)
                closed += 1
        return closed

    async def _run(self) -> None:
        while self.watched:
            await asyncio.sleep(1.0)
            self.check(time.monotonic())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def sanitised_headers(request: web.Request) -> dict[str, str] | None:
    """Headers without those the client named in ``Connection``; None when nothing needs removing."""
    conn = request.headers.get("Connection")
    if not conn:
        return None
    named = {t.strip().lower() for t in conn.split(",")} - {"close", "keep-alive", ""}
    if not named:
        return None
    return {k: v for k, v in request.headers.items() if k.lower() not in named and k.lower() not in HOP_BY_HOP}


def make_middleware(cfg: HardeningConfig, watch: IdleWatch) -> Callable[[web.Request, Handler], Awaitable]:
    rates = ConnectionRates(cfg.conn_rate, cfg.conn_burst)

    @web.middleware
    async def harden(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            rates.take(request.transport.get_extra_info("peername") if request.transport else None)
            rid = request.headers.get("X-Request-Id")
            if rid is not None and not _REQUEST_ID.fullmatch(rid):
                raise APIError(400, "X-Request-Id must be 1-128 printable ASCII characters", param="X-Request-Id",
                               code="invalid_header")
            clean = sanitised_headers(request)
            if clean is not None:
                request = request.clone(headers=clean)  # before the body is read: aiohttp clones only then
            if request.method == "POST" and request.body_exists:
                try:
                    if request.content.is_eof():  # the whole body came with the headers: nothing to wait for
                        await request.read()
                    else:
                        async with asyncio.timeout(cfg.body_timeout):  # no extra task, unlike wait_for
                            await request.read()  # cached: the handler's read() returns these bytes
                except TimeoutError:
                    raise APIError(408, f"request body not received within {cfg.body_timeout:g}s",
                                   code="body_timeout") from None
                except web.HTTPRequestEntityTooLarge:
                    raise APIError(413, "request body too large", code="body_too_large") from None
        except APIError as e:
            return http_response(e)
        transport = request.transport
        watch.watch(transport)
        try:
            resp = await handler(request)
        finally:
            watch.unwatch(transport)
        if resp.status in (404, 405) and "Allow" not in resp.headers:
            allowed = allowed_methods(request)
            if allowed and request.method not in allowed.split(", "):
                # The path exists, the method does not: 405 with Allow (RFC 9110 15.5.6).
                resp = http_response(APIError(405, f"{request.method} is not allowed on {request.path}; use "
                                                   f"{allowed}", code="method_not_allowed"))
                resp.headers["Allow"] = allowed
        return resp

    return harden


def allowed_methods(request: web.Request) -> str:
    """The methods routed for the request's exact path (the catch-all route excluded)."""
    methods = {route.method for resource in request.app.router.resources()
               if resource.canonical == request.path for route in resource if route.method != "*"}
    return ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))


class RedactSecrets(logging.Filter):
    """Rewrites secrets in a record's final message; attach to handlers (filters on loggers miss propagation)."""

    PATTERNS = (
        (re.compile(r"(?i)(bearer\s+)[^\s'\",]+"), r"\1***"),
        (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), "sk-***"),
        (re.compile(r"(?i)((?:api[-_]?key|token|password|secret)[\"']?\s*[=:]\s*[\"']?)[^\s'\",&}]+"), r"\1***"),
        (re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s:@]*:[^/\s@]*@"), r"\1***@"),
    )

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must not lose the record
            return True
        redacted = message
        for pattern, repl in self.PATTERNS:
            redacted = pattern.sub(repl, redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_redaction(logger: logging.Logger | None = None) -> RedactSecrets:
    """Attach one ``RedactSecrets`` to every handler of ``logger`` (root by default) that lacks one."""
    logger = logger or logging.getLogger()
    f = RedactSecrets()
    for h in logger.handlers:
        if not any(isinstance(x, RedactSecrets) for x in h.filters):
            h.addFilter(f)
    return f
