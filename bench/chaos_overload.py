"""Chaos scenarios ``overload`` (3x the cluster's capacity) and ``soak`` (70% of it for a long time).

The cluster: 2 sim replicas, each running at most ``seqs`` requests at once (``--max-num-seqs``), so its capacity
is known and small enough for this machine to exceed it 3x: ``capacity = replicas * seqs / unloaded e2e``, with
the unloaded latency measured first in the same run (one request at a time). The gateway routes with
``least_load`` (with identical replicas, the replica with the fewest requests is the one that would start it
soonest, which is also what shedding assumes).

overload: the latency target is "admitted TTFT within 2x the unloaded p99", so the gateway is restarted (replicas
kept) with its queueing budget (``--shed-queue-delay``) set to the unloaded p99 TTFT; then Poisson arrivals at 3x capacity.
Reported: how fast excess requests were rejected (client-side latency of 429/503 answers, all carrying
``Retry-After``), admitted p99 TTFT over the unloaded p99, failures.

soak: Poisson arrivals at 70% of capacity for ``duration`` seconds; the gateway's and replicas' RSS sampled every
few seconds; RSS growth from the end of the first minute (or 10% of the run) to the end, and errors.
"""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp

from bench.chaos_cluster import Cluster, rss_bytes
from bench.chaos_load import Sent, failures, open_loop, pct, prompt, stream_chat, summary

SEQS, TOKENS = 4, 32


def _cluster(shed: float | None) -> Cluster:
    args = ["--policy", "least_load"] + ([] if shed is None else ["--shed-queue-delay", f"{shed:.4f}"])
    return Cluster(replicas=2, replica_args=("--max-num-seqs", str(SEQS)), gateway_args=tuple(args)).start()



async def unloaded(session: aiohttp.ClientSession, gateway: str, n: int, rng: random.Random) -> list[Sent]:
    out = []
    for _ in range(n):
        out.append(await stream_chat(session, gateway, TOKENS, prompt(rng)))
    return out


async def overload(duration: float = 15.0, factor: float = 3.0, quick: bool = False) -> dict:
    rng = random.Random(3)
    cl = _cluster(shed=None)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await unloaded(session, cl.gateways[0].url, 5, rng)  # warm up
            base = await unloaded(session, cl.gateways[0].url, 15 if quick else 60, rng)
            base_sum = summary(base)
            capacity = 2 * SEQS / base_sum["e2e_p50_s"]
            budget = base_sum["ttft_p99_s"]
            gw = (await asyncio.to_thread(cl.restart_gateway, 0, ("--shed-queue-delay", f"{budget:.4f}"))).url
            sent = await open_loop(capacity * factor, duration, lambda i: stream_chat(session, gw, TOKENS,
                                                                                      prompt(rng)))
    finally:
        cl.close()
    rejected = [s for s in sent if s.status in (429, 503)]
    reject_lat = [s.end - s.start for s in rejected if s.end is not None]
    admitted = summary(sent)
    return {
        "scenario": "overload", "replicas": 2, "max_num_seqs": SEQS, "output_tokens": TOKENS,
        "unloaded": base_sum, "capacity_rps": capacity, "offered_rps": capacity * factor, "duration_s": duration,
        "shed_queue_delay_s": budget, "load": admitted,
        "rejected": len(rejected), "rejected_with_retry_after": sum(s.retry_after is not None for s in rejected),
        "reject_latency_p50_s": pct(reject_lat, 50), "reject_latency_p99_s": pct(reject_lat, 99),
        "reject_latency_max_s": max(reject_lat, default=None),
        "admitted_ttft_p99_s": admitted["ttft_p99_s"],
        "admitted_ttft_p99_ratio": (admitted["ttft_p99_s"] or 0) / budget if budget else None,
        "admitted_rps": admitted["ok"] / duration,
        "failed": admitted["failed"], "failures": failures(sent),
    }


async def soak(duration: float = 1800.0, load: float = 0.7, sample_every: float = 5.0) -> dict:
    rng = random.Random(4)
    cl = _cluster(shed=None)
    samples: list[dict] = []
    try:
        gw = cl.gateways[0]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            base = summary(await unloaded(session, gw.url, 8 if duration < 60 else 30, rng))
            capacity = 2 * SEQS / base["e2e_p50_s"]
            t0 = time.monotonic()

            async def sampler() -> None:
                while True:
                    samples.append({"t": time.monotonic() - t0, "gateway_rss": rss_bytes(gw.pid),
                                    "replica_rss": [rss_bytes(r.pid) for r in cl.replicas]})
                    await asyncio.sleep(sample_every)

            task = asyncio.create_task(sampler())
            try:
                sent = await open_loop(capacity * load, duration, lambda i: stream_chat(session, gw.url, TOKENS,
                                                                                        prompt(rng)), seed=4)
            finally:
                task.cancel()
            samples.append({"t": time.monotonic() - t0, "gateway_rss": rss_bytes(gw.pid),
                            "replica_rss": [rss_bytes(r.pid) for r in cl.replicas]})
    finally:
        cl.close()
    warm = next((s for s in samples if s["t"] >= min(60.0, duration * 0.1)), samples[0])
    end = samples[-1]
    res = summary(sent)
    return {"scenario": "soak", "duration_s": duration, "load_fraction": load, "capacity_rps": capacity,
            "offered_rps": capacity * load, "load": res,
            "errors": res["failed"] + res["rejected"],
            "gateway_rss_start_mb": warm["gateway_rss"] / 2**20, "gateway_rss_end_mb": end["gateway_rss"] / 2**20,
            "rss_growth": end["gateway_rss"] / warm["gateway_rss"] - 1,
            "replica_rss_growth": [e / w - 1 for e, w in zip(end["replica_rss"], warm["replica_rss"], strict=True)],
            "samples": samples, "failures": failures(sent)}
