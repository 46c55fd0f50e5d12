"""`foresight bench scale`: routing decision time and quality from 8 to 1,024 replicas (discrete-event simulation).

    foresight bench scale --fleets 8,64,256,1024 --policies round_robin,prefix,foresight \
        --trace traces/mooncake_conversation_trace.jsonl.gz --per-replica-rate 0.6 --requests-per-replica 12

For each fleet size N the Mooncake trace is replayed at ``N * per-replica-rate`` requests/s (the same load per
replica at every size) through the real policy code on simulated replicas (``bench.des``), for
``min(N * requests-per-replica, max-requests)`` requests. Reported per policy and size: decision time of
``policy.rank`` (p50/p99, as wall clock and as this thread's CPU time, which a loaded shared machine cannot
inflate by preempting the process; the garbage collector's long-lived objects are frozen after setup, as in a
long-running gateway), p90 TTFT, SLO attainment and prefix hit rate. Goals: p99 decision
time <= 0.5 ms at 64 replicas and <= 5 ms at 1,024.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench import results, traces
    from bench.des.cluster import Cluster, SimConfig
    from bench.latency import pct, summarize
    from bench.results import shared_data_dir

    path = args.trace
    full = traces.load_trace(path if Path(path).exists() else shared_data_dir() / path)
    rows = []
    for n in [int(x) for x in args.fleets.split(",")]:
        count = min(n * args.requests_per_replica, args.max_requests)
        reqs = traces.shape(full, rate=n * args.per_replica_rate, start=args.start,
                            duration=count / (n * args.per_replica_rate))
        for policy in args.policies.split(","):
            cluster = Cluster(SimConfig(policy, replicas=n, profile=args.sim_profile, block_size=args.sim_block_size))
            gc.collect()
            gc.freeze()
            try:
                out = cluster.run(reqs)
            finally:
                gc.unfreeze()
            s = summarize(out.results, out.virtual_s, args.slo_ttft, args.slo_tpot)
            row = {"replicas": n, "policy": policy, "requests": len(reqs), "offered_rps": s["offered_rps"],
                   "decision_p50_ms": pct(out.decision_s, 50) * 1e3, "decision_p99_ms": pct(out.decision_s, 99) * 1e3,
                   "decision_max_ms": max(out.decision_s) * 1e3,
                   "decision_cpu_p50_ms": pct(out.decision_cpu_s, 50) * 1e3,
                   "decision_cpu_p99_ms": pct(out.decision_cpu_s, 99) * 1e3, "ttft_p90": s["ttft_p90"],
                   "slo_attainment": s["slo_attainment"], "prefix_hit_rate": out.prefix_hit_rate,
                   "sim_wall_s": out.wall_s, "policy_stats": out.policy_stats}
            rows.append(row)
            print(f"N={n:5d} {policy:<12} req={len(reqs):5d} decision p50/p99 wall {row['decision_p50_ms']:.3f}/"
                  f"{row['decision_p99_ms']:.3f} ms cpu {row['decision_cpu_p50_ms']:.3f}/"
                  f"{row['decision_cpu_p99_ms']:.3f} ms | p90 TTFT {s['ttft_p90']:.2f}s SLO "
                  f"{s['slo_attainment']:.3f} hit {out.prefix_hit_rate:.3f} ({out.wall_s:.0f}s)", flush=True)
    isolated = {}
    for n in [int(x) for x in args.fleets.split(",")]:
        times = isolated_decisions("foresight", n, full[:3000], warm=1000, timed=1000)
        isolated[n] = {"p50_ms": pct(times, 50) * 1e3, "p99_ms": pct(times, 99) * 1e3, "max_ms": max(times) * 1e3}
        print(f"N={n:5d} foresight isolated gateway-state decision cpu p50 {isolated[n]['p50_ms']:.3f} ms "
              f"p99 {isolated[n]['p99_ms']:.3f} ms", flush=True)
    goals = {}
    for n, limit in ((64, 0.5), (1024, 5.0)):
        if n in isolated:
            goals[f"foresight p99 decision at {n} replicas <= {limit} ms (isolated gateway state, CPU)"] = {
                "p99_ms": isolated[n]["p99_ms"], "met": isolated[n]["p99_ms"] <= limit}
        got = [r for r in rows if r["replicas"] == n and r["policy"] == "foresight"]
        if got:
            goals[f"foresight p99 decision at {n} replicas <= {limit} ms"] = {
                "wall_ms": got[0]["decision_p99_ms"], "cpu_ms": got[0]["decision_cpu_p99_ms"],
                "met_cpu": got[0]["decision_cpu_p99_ms"] <= limit, "met_wall": got[0]["decision_p99_ms"] <= limit,
                "loadavg_note": "wall includes OS preemption by other processes on a shared 2-core machine"}
    out = results.output_path(args.json, args.name or "scale")
    png = out.with_suffix(".png")
    config = {k: v for k, v in vars(args).items() if k != "func"}
    results.write_json(out, {"config": config, "goals": goals, "rows": rows, "isolated_decision": isolated,
                             "plot": str(png)})  # first: it creates the folder the plot goes to
    plot(rows, str(png))
    for k, v in goals.items():
        print(f"  {k}: {v}")
    return {"rows": rows, "goals": goals}


def isolated_decisions(policy_name: str, n: int, reqs: list, warm: int, timed: int, seed: int = 0) -> list[float]:
    """CPU seconds per ``rank`` in a process holding only gateway state, as a gateway does.

    ``n`` replicas with varied load reports; the index is warmed by routing (and recording) ``warm`` requests of
    the workload, then ``timed`` more are ranked and dispatched. The DES numbers include the simulated engines'
    heap (garbage collection over millions of block objects) that a gateway process never holds.
    """
    import random
    import time

    from bench.des.workload import prompt_text, prompt_tokens
    from gateway.routing.base import InflightCounts, PolicyContext, ReplicaView, RequestView, create_policy

    rng = random.Random(seed)
    policy = create_policy(policy_name, PolicyContext("gw", options={"seed": str(seed)}))
    views = []
    for i in range(n):
        load = {"block_size": 16, "kv_blocks_total": 25720, "kv_blocks_used": rng.randrange(0, 25000),
                "waiting_prompt_tokens": rng.choice([0, 0, 2000, 12000, 40000]), "num_running": rng.randrange(0, 30),
                "prefill_tokens_per_s": rng.uniform(25000, 35000), "decode_step_ms": rng.uniform(15, 40),
                "max_num_seqs": 256, "ts": 1.0}
        views.append(ReplicaView(f"r{i}", f"sim://r{i}", ("sim",), load=load,
                                 local=InflightCounts(rng.randrange(0, 6), rng.uniform(0, 20000), rng.uniform(0, 3000))))
    out = []
    for k, req in enumerate(reqs[: warm + timed]):
        tokens = prompt_tokens(req)
        view = RequestView(f"q{k}", "sim", "completions", prompt_text(tokens), {}, None, len(tokens), 300.0, 600.0)
        t0 = time.thread_time()
        decision = policy.rank(view, views)
        if k >= warm:
            out.append(time.thread_time() - t0)
        policy.on_dispatch(view, decision.ranked[0])
    return out


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == policy]
        a.plot([r["replicas"] for r in rs], [r["decision_p99_ms"] for r in rs], marker="o", label=policy)
        b.plot([r["replicas"] for r in rs], [r["ttft_p90"] for r in rs], marker="o", label=policy)
    a.set(xscale="log", yscale="log", xlabel="replicas", ylabel="p99 decision time (ms)", title="decision time")
    b.set(xscale="log", xlabel="replicas", ylabel="p90 TTFT (s)", title="routing quality (same load per replica)")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scale", help="decision time and routing quality from 8 to 1,024 replicas (DES)")
    p.add_argument("--fleets", default="8,64,256,1024")
    p.add_argument("--policies", default="round_robin,prefix,foresight")
    p.add_argument("--trace", default="traces/mooncake_conversation_trace.jsonl.gz")
    p.add_argument("--per-replica-rate", type=float, default=0.6, help="offered req/s per replica")
    p.add_argument("--requests-per-replica", type=int, default=12)
    p.add_argument("--max-requests", type=int, default=6000)
    p.add_argument("--start", type=float, default=0.0, help="skip the trace's first S seconds")
    p.add_argument("--sim-profile", default="h100-llama8b")
    p.add_argument("--sim-block-size", type=int, default=16)
    p.add_argument("--slo-ttft", type=float, default=3.0)
    p.add_argument("--slo-tpot", type=float, default=0.1)
    p.add_argument("--name", default=None)
    p.add_argument("--json", default=None)
    p.set_defaults(func=lambda a: (run(a), 0)[1])
