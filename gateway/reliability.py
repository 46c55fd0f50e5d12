"""Wiring of the reliability and security layer into the gateway: its flags, and ``install(app, gw)``.

``install`` adds, around the routes ``gateway.app`` defines: the hardening middleware and parser limits
(``gateway.hardening``), the idle-stream watch, secret redaction on the log handlers, work-based load shedding
(``gateway.overload``, consulted by the proxy when it ranks replicas), mid-stream continuation
(``gateway.continuation``, attached to the proxy when it starts) and ``GET /openapi.json`` (``gateway.openapi``).
Every setting is a ``foresight gateway`` flag (so also ``FORESIGHT_*`` and YAML).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.hardening import HardeningConfig, IdleWatch, install_redaction, make_middleware

if TYPE_CHECKING:
    from gateway.app import Gateway


@dataclass
class ReliabilityConfig:
    hardening: HardeningConfig = field(default_factory=HardeningConfig)
    max_continuations: int = 2
    shed_queue_delay: float = 0.5


H = HardeningConfig()
R = ReliabilityConfig()


def add_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--max-continuations", type=int, default=R.max_continuations,
      help="replicas tried to continue a stream whose replica failed mid-way (0: end it with an error event)")
    a("--shed-queue-delay", type=float, default=R.shed_queue_delay,
      help="reject at once (503 + Retry-After) requests predicted to wait longer than this many seconds "
           "before their prefill starts (0: no work-based shedding)")
    a("--max-header-bytes", type=int, default=H.max_header_bytes, help="longest request line or header field")
    a("--max-headers", type=int, default=H.max_headers, help="most header fields per request")
    a("--header-timeout", type=float, default=H.header_timeout,
      help="seconds a connection may take to send a request head (slowloris) or stay idle between requests")
    a("--body-timeout", type=float, default=H.body_timeout, help="seconds to receive a request body (then 408)")
    a("--idle-timeout", type=float, default=H.idle_timeout,
      help="seconds a streaming client may stop reading before its stream is aborted")
    a("--conn-rate", type=float, default=H.conn_rate, help="requests per second per connection (0: unlimited)")
    a("--conn-burst", type=float, default=H.conn_burst, help="burst of requests per connection")


def from_args(args: argparse.Namespace) -> ReliabilityConfig:
    return ReliabilityConfig(
        HardeningConfig(args.max_header_bytes, args.max_headers, args.header_timeout, args.body_timeout,
                        args.idle_timeout, args.conn_rate, args.conn_burst),
        args.max_continuations, args.shed_queue_delay)


def handler_args(cfg: ReliabilityConfig) -> dict[str, object]:
    from gateway.hardening import handler_args as _args

    return _args(cfg.hardening)


def install(app: web.Application, gw: Gateway) -> None:
    """Add the middleware, routes and hooks; call before the app starts."""
    from gateway.continuation import Continuation
    from gateway.openapi import openapi_handler
    from gateway.overload import OverloadShedder

    cfg: ReliabilityConfig = gw.cfg.reliability
    watch = IdleWatch(cfg.hardening.idle_timeout)
    app.middlewares.append(make_middleware(cfg.hardening, watch))
    shedder = OverloadShedder(cfg.shed_queue_delay, gw.metrics.registry)
    app.router.add_get("/openapi.json", openapi_handler(gw))

    async def started(_app: web.Application) -> None:
        install_redaction()
        if gw.proxy is not None:
            gw.proxy.continuation = Continuation(gw.proxy, cfg.max_continuations)
            gw.proxy.shedder = shedder

    async def stopped(_app: web.Application) -> None:
        await watch.close()

    app.on_startup.append(started)
    app.on_cleanup.append(stopped)
