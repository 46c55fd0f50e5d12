"""``foresight bench chaos SCENARIO``: failures, overload and hostile input against a local cluster of real processes.

Scenarios (each starts its own simulated replicas, gateways and, where needed, Redis, and stops them after):
``replica-kill``, ``replica-slow`` (``bench.chaos_replicas``), ``redis-outage`` (``bench.chaos_redis``),
``overload``, ``soak`` (``bench.chaos_overload``) and ``fuzz`` (``bench.chaos_fuzz``). ``--quick`` runs the short
version the test suite uses. The JSON (``--json``, default ``bench/results/chaos_<scenario>.json``) holds every
number plus the machine's load average; a summary is printed.
"""

from __future__ import annotations

import argparse
import asyncio

SCENARIOS = ("replica-kill", "replica-slow", "redis-outage", "overload", "soak", "fuzz")


def run_scenario(name: str, quick: bool = False, duration: float | None = None, requests: int | None = None,
                 gateway_args: tuple = ()) -> dict:
    """Run one scenario and return its result (no file written)."""
    if name == "replica-kill":
        from bench.chaos_replicas import replica_kill

        if quick:  # short breaker backoff: re-admission within the test's time, not the default's seconds
            return asyncio.run(replica_kill(gateway_args=(*gateway_args, "--breaker-backoff", "0.25"),
                                            warmup=1.5, down=1.0, after=1.0, workers=8, tokens=60))
        return asyncio.run(replica_kill(gateway_args=gateway_args))
    if name == "replica-slow":
        from bench.chaos_replicas import replica_slow

        return asyncio.run(replica_slow(phase=duration or (3.0 if quick else 15.0), gateway_args=gateway_args,
                                        **({"workers": 6, "tokens": 30, "replicas": 3} if quick else {})))
    if name == "redis-outage":
        from bench.chaos_redis import redis_outage

        return asyncio.run(redis_outage(outage=duration or (2.0 if quick else 10.0), quick=quick,
                                        gateway_args=gateway_args))
    if name in ("overload", "soak"):
        from bench.chaos_overload import overload, soak

        if name == "overload":
            return asyncio.run(overload(duration=duration or (3.0 if quick else 15.0), quick=quick))
        return asyncio.run(soak(duration=duration or (10.0 if quick else 1800.0)))
    if name == "fuzz":
        from bench.chaos_fuzz import fuzz

        return fuzz(requests or (300 if quick else 10_000))
    raise ValueError(f"unknown scenario {name!r}; choose one of {SCENARIOS}")


def _headline(result: dict) -> str:
    keys = ("failed_not_streaming", "streams_in_flight_on_killed", "streams_continued_ok", "user_visible_failures",
            "ejected_after_s", "readmitted_after_healthy_s", "ttft_p99_ratio_vs_healthy", "failed",
            "failed_requests", "consistent_after_s", "reject_latency_p99_s", "admitted_ttft_p99_ratio",
            "rss_growth", "errors", "server_errors", "crashes", "requests")
    return ", ".join(f"{k}={result[k]:.4g}" if isinstance(result[k], float) else f"{k}={result[k]}"
                     for k in keys if k in result)


def run(args: argparse.Namespace) -> int:
    from bench.results import output_path, write_json

    result = run_scenario(args.scenario, quick=args.quick, duration=args.duration, requests=args.requests)
    out = output_path(args.json, f"chaos_{args.scenario.replace('-', '_')}")
    write_json(out, result)
    print(f"chaos {args.scenario}: {_headline(result)}")
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chaos", help="Failure, overload and fuzzing scenarios against a local cluster.",
                              description=__doc__)
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--json", default=None, help="result file (default bench/results/chaos_<scenario>.json)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds: soak length (default 1800), overload/slow phase, Redis outage (default 10)")
    p.add_argument("--requests", type=int, default=None, help="fuzz: generated requests (default 10000)")
    p.add_argument("--quick", action="store_true", help="the short version the test suite runs")
    p.set_defaults(func=run)
