"""``foresight bench routing --mode sim``: one policy variant on the discrete-event simulation (``bench.des``)."""

from __future__ import annotations

import argparse
from typing import Any

from bench.des.cluster import Cluster, SimConfig
from bench.latency import pct, summarize


def run_sim(args: argparse.Namespace, variant: Any, reqs: list) -> tuple[dict[str, Any], list[float]]:
    if variant.external:
        raise SystemExit(f"--external {variant.label}: external routers run only with --mode live")
    cfg = SimConfig(variant.policy, replicas=args.replicas, profile=args.sim_profile, options=dict(variant.options),
                    gateways=args.gateways, estimator=variant.harness.get("estimator", "history"),
                    block_size=args.sim_block_size, host_kv_memory=args.host_kv_memory,
                    decode_step_tokens=args.decode_step_tokens,
                    shed_queue_delay=float(variant.harness.get("shed", 0.0)))
    out = Cluster(cfg).run(reqs)
    summary = summarize(out.results, out.virtual_s, args.slo_ttft, args.slo_tpot)
    summary.update(prefix_hit_rate=out.prefix_hit_rate, preemptions=out.preemptions, sim_wall_s=out.wall_s,
                   decision_p50_ms=(pct(out.decision_s, 50) or 0) * 1e3,
                   decision_p99_ms=(pct(out.decision_s, 99) or 0) * 1e3,
                   decision_cpu_p99_ms=(pct(out.decision_cpu_s, 99) or 0) * 1e3, policy_stats=out.policy_stats)
    return summary, [r.ttft for r in out.results if r.ttft is not None]
