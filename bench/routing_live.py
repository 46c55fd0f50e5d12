"""``foresight bench routing --mode live``: one variant on real processes, fresh for every run.

Starts ``--replicas`` simulated replicas (``--sim-profile``), then either ``--gateways`` Foresight gateways with
the variant's policy (several gateways share a throwaway ``redis-server``, as in production) or the variant's
external router, replays the workload open-loop through them (round-robin across gateways), reads the prefix hit
rate from the replicas' ``/metrics`` and stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.latency import summarize
from bench.procs import Fleet, free_port
from bench.prom import prefix_hit_rate, scrape_all
from bench.replay import prepare
from bench.replay_client import run_open_loop
from bench.sim import host_lag


def _redis(fleet: Fleet) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("several gateways need redis-server on PATH to share state")
    port = free_port()
    proc = fleet.start("redis", [binary, "--port", str(port), "--save", "", "--appendonly", "no"], port,
                       health="")
    deadline = time.monotonic() + 20
    import redis

    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port).ping():
                return f"redis://127.0.0.1:{port}/0"
        except redis.RedisError:
            time.sleep(0.1)
    raise TimeoutError(f"redis-server did not start:\n{proc.tail()}")


def run_live(args: argparse.Namespace, variant: Any, reqs: list, synth: Any) -> tuple[dict[str, Any], list[float]]:
    log_dir = Path(tempfile.mkdtemp(prefix=f"foresight-routing-{variant.label}-"))
    with Fleet(log_dir) as fleet:
        redis_url = _redis(fleet) if args.gateways > 1 and not variant.external else None
        replica_extra = ["--redis", redis_url] if redis_url else []
        if args.host_kv_memory:
            replica_extra += ["--host-kv-memory", str(args.host_kv_memory)]
        if args.decode_step_tokens:
            replica_extra += ["--decode-step-tokens", str(args.decode_step_tokens)]
        replicas = fleet.replicas(args.replicas, args.sim_profile, args.model, replica_extra)
        urls = [r.url for r in replicas]
        if variant.external:
            targets = [fleet.external(variant.label, variant.external, urls).url]
        else:
            extra = ["--predictor", variant.harness.get("predictor", "default"), *shlex.split(args.gateway_args)]
            if "shed" in variant.harness:  # after --gateway-args: the variant's own setting wins
                extra += ["--shed-queue-delay", variant.harness["shed"]]
            for k, v in variant.options.items():
                extra += ["--policy-opt", f"{k}={v}"]
            if redis_url:
                extra += ["--redis", redis_url]
            targets = [fleet.gateway(f"gateway{g}", variant.policy, urls, extra).url for g in range(args.gateways)]
        from replicas.models import served_name

        model = served_name(args.model)
        api = "chat" if args.content else "completions"
        prepared = prepare(reqs, synth, model, api, True, False)
        before = asyncio.run(scrape_all(urls))
        lag_before = host_lag(urls)
        results, wall = asyncio.run(run_open_loop(targets, prepared, timeout=args.timeout))
        after = asyncio.run(scrape_all(urls))
        lag_after = host_lag(urls)
    summary = summarize(results, wall, args.slo_ttft, args.slo_tpot)
    summary["prefix_hit_rate"] = prefix_hit_rate(before, after)
    # The simulation's distortion by the shared host: steps that started late beyond what the replicas' virtual
    # clocks absorb, and the seconds that added (compare runs by these before blaming the router).
    summary["replica_lag_resets"] = lag_after[0] - lag_before[0]
    summary["replica_lag_lost_s"] = round(lag_after[1] - lag_before[1], 3)
    if summary["output_length_mismatch"]:
        print(f"warning: {variant.label}: {summary['output_length_mismatch']} of {summary['completed']} answers did "
              "not have the trace's length (the target did not pass the forcing on): its load differs",
              file=sys.stderr, flush=True)
    summary["logs"] = str(log_dir)
    return summary, [r.ttft for r in results if r.ttft is not None]
