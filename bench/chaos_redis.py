"""Chaos scenario ``redis-outage``: Redis dies for ``outage`` seconds under load, with two gateways sharing state.

Two gateways on one Redis in front of 3 sim replicas (which publish their load reports there too); closed-loop
streaming load split over both gateways. Redis is SIGKILLed (its data is lost, as in a crash without persistence)
and restarted on the same port after ``outage`` seconds. During the outage a few long streams are opened through
gateway g1, so that some load is in flight when Redis returns.

Reported: failed requests (goal 0); and ``consistent_after_s``: the time from Redis accepting connections again to
the first moment gateway g0's view of g1's in-flight requests (its ``remote_inflight``, summed over replicas) equals
what g1 itself reports, with both gateways' store healthy (goal <= 2 s).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

import aiohttp

from bench.chaos_cluster import ADMIN_TOKEN, Cluster, _wait_port
from bench.chaos_load import closed_loop, failures, prompt, stream_chat, summary


async def _admin(session: aiohttp.ClientSession, gateway: str) -> dict | None:
    try:
        async with session.get(gateway + "/admin/replicas", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                               timeout=aiohttp.ClientTimeout(total=1)) as r:
            return await r.json()
    except (aiohttp.ClientError, TimeoutError):
        return None


def _sum(data: dict, key: str) -> int:
    return int(sum(r[key]["requests"] for r in data["replicas"]))


async def consistent(session: aiohttp.ClientSession, g0: str, g1: str) -> bool:
    a, b = await asyncio.gather(_admin(session, g0), _admin(session, g1))
    return bool(a and b and a["store_ok"] and b["store_ok"] and _sum(a, "remote_inflight") == _sum(b, "inflight")
                and _sum(b, "inflight") > 0)


async def redis_outage(outage: float = 10.0, workers: int = 8, tokens: int = 40, warmup: float = 2.0,
                       held: int = 4, quick: bool = False, gateway_args: tuple = ()) -> dict:
    cl = Cluster(replicas=3, gateways=2, redis=True, gateway_args=gateway_args).start()
    assert cl.redis is not None
    g0, g1 = (g.url for g in cl.gateways)
    rng = random.Random(2)
    stop = [False]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            load = asyncio.create_task(closed_loop(
                workers, lambda: stop[0], lambda w: stream_chat(session, (g0, g1)[w % 2], tokens, prompt(rng))))
            await asyncio.sleep(warmup)
            cl.redis.signal(signal.SIGKILL)
            t_down = time.monotonic()
            await asyncio.sleep(outage / 2)
            # Long streams through g1 that are still running when Redis comes back.
            long_tokens = int((outage / 2 + 6.0) / 0.012)
            long = [asyncio.create_task(stream_chat(session, g1, long_tokens, prompt(rng))) for _ in range(held)]
            await asyncio.sleep(max(0.0, outage - (time.monotonic() - t_down)))
            cl.redis.start()
            await asyncio.to_thread(_wait_port, cl.redis.port)
            t_up = time.monotonic()
            t_consistent = None
            while time.monotonic() - t_up < 15.0:
                if await consistent(session, g0, g1):
                    t_consistent = time.monotonic()
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0 if quick else 3.0)
            stop[0] = True
            sent = await load
            for t in long:
                t.cancel()
            await asyncio.gather(*long, return_exceptions=True)
    finally:
        cl.close()
    during = [s for s in sent if s.end is not None and s.end >= t_down and s.start <= t_up]
    return {"scenario": "redis-outage", "gateways": 2, "replicas": 3, "outage_s": outage,
            "load": summary(sent), "during_outage": summary(during),
            "failed_requests": sum(not s.ok for s in sent),
            "consistent_after_s": None if t_consistent is None else t_consistent - t_up,
            "failures": failures(sent)}
