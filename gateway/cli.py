"""``foresight gateway``: serve the OpenAI-compatible gateway (every flag also reads ``FORESIGHT_<FLAG>``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from foresight.gc_tuning import freeze_startup_objects
from gateway import reliability
from gateway.config import GatewayConfig
from gateway.routing.base import DEFAULT_POLICY, POLICIES, parse_options

log = logging.getLogger(__name__)
D = GatewayConfig()


def add_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--host", default=D.host, help="address to listen on")
    a("--port", type=int, default=D.port)
    a("--replica", dest="replicas", action="append", default=[], metavar="URL",
      help="replica base URL (repeatable; comma-separated in the env var)")
    a("--policy", default=DEFAULT_POLICY, choices=sorted(POLICIES), help="routing policy")
    a("--policy-opt", dest="policy_opt", action="append", default=[], metavar="KEY=VALUE",
      help="policy-specific option (repeatable)")
    a("--redis", default=None, metavar="URL", help="share state through Redis (default: in-memory, one gateway)")
    a("--key-prefix", default=D.key_prefix, help="prefix of every Redis key")
    a("--gateway-id", default=None, help="this gateway's id in shared state (default: random)")
    a("--predictor", default=D.predictor, help="output-length predictor: default, off, or a model PATH")
    a("--api-keys", default=None, metavar="FILE", help="API keys file (see gateway/auth.py); enables auth")
    a("--admin-token", default=None, help="token for /admin/* (admin API disabled without it)")
    a("--upstream-api-key", default=None, help="bearer token sent to replicas")
    a("--max-body-bytes", type=int, default=D.max_body_bytes)
    a("--max-tokens-limit", type=int, default=D.max_tokens_limit, help="largest max_tokens accepted")
    a("--max-inflight", type=int, default=D.max_inflight, help="requests in flight per gateway")
    a("--max-inflight-per-replica", type=int, default=D.max_inflight_per_replica)
    a("--queue-size", type=int, default=D.queue_size, help="requests that may wait for admission")
    a("--queue-timeout", type=float, default=D.queue_timeout, help="seconds a request may wait for admission")
    a("--max-attempts", type=int, default=D.max_attempts, help="dispatches per request (1 = no retry)")
    a("--retry-deadline", type=float, default=D.retry_deadline, help="seconds for all attempts together")
    a("--connect-timeout", type=float, default=D.connect_timeout)
    a("--read-timeout", type=float, default=D.read_timeout, help="seconds without upstream bytes")
    a("--probe-interval", type=float, default=D.probe_interval, help="seconds between health probes")
    a("--probe-timeout", type=float, default=D.probe_timeout)
    a("--load-ttl", type=float, default=D.load_ttl, help="age after which a load report is ignored")
    a("--breaker-threshold", type=int, default=D.breaker_threshold, help="consecutive failures that eject")
    a("--breaker-backoff", type=float, default=D.breaker_backoff, help="first ejection time, doubles")
    a("--sync-interval", type=float, default=D.sync_interval, help="seconds between shared-state syncs")
    a("--inflight-push-interval", type=float, default=D.inflight_push_interval,
      help="with --redis: seconds between checks that push this gateway's in-flight counts to peers on change "
           "(0: peers see them at the next sync only)")
    a("--block-size", type=int, default=D.block_size, help="prefix block size in tokens (DESIGN.md 2)")
    a("--hash-seed", default=D.hash_seed, help="block hash seed (same on gateway and replicas)")
    a("--sticky-epsilon", type=float, default=D.sticky_epsilon, help="sticky sessions' load bound (1+eps)")
    a("--access-log", action="store_true", help="log every request (costs throughput)")
    reliability.add_flags(p)


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    replicas = [u for item in args.replicas for u in str(item).split(",") if u.strip()]
    cfg = GatewayConfig(
        host=args.host, port=args.port, replicas=replicas, policy=args.policy,
        policy_opts=parse_options(args.policy_opt), redis=args.redis or None, key_prefix=args.key_prefix,
        predictor=args.predictor, api_keys=args.api_keys, admin_token=args.admin_token,
        upstream_api_key=args.upstream_api_key, max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit, max_inflight=args.max_inflight,
        max_inflight_per_replica=args.max_inflight_per_replica, queue_size=args.queue_size,
        queue_timeout=args.queue_timeout, max_attempts=args.max_attempts, retry_deadline=args.retry_deadline,
        connect_timeout=args.connect_timeout, read_timeout=args.read_timeout, probe_interval=args.probe_interval,
        probe_timeout=args.probe_timeout, load_ttl=args.load_ttl, breaker_threshold=args.breaker_threshold,
        breaker_backoff=args.breaker_backoff, sync_interval=args.sync_interval,
        inflight_push_interval=args.inflight_push_interval, block_size=args.block_size,
        hash_seed=args.hash_seed, sticky_epsilon=args.sticky_epsilon, access_log=args.access_log,
    )
    if args.gateway_id:
        cfg.gateway_id = args.gateway_id
    cfg.reliability = reliability.from_args(args)
    return cfg


async def serve(cfg: GatewayConfig) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, finish cleanup and return."""
    from aiohttp import web

    from gateway.app import build_app

    app = build_app(cfg)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=log if cfg.access_log else None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, backlog=1024, reuse_address=True)
    await site.start()
    freeze_startup_objects()
    log.info("foresight gateway listening on http://%s:%d", cfg.host, cfg.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        raise SystemExit(f"foresight gateway: {e}") from None
    import uvloop

    uvloop.run(serve(cfg))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("gateway", help="Serve the OpenAI-compatible gateway in front of replicas.",
                              description=__doc__)
    add_flags(p)
    p.set_defaults(func=run)
