"""Chaos scenarios on replicas: ``replica-kill`` (SIGKILL under streaming load) and ``replica-slow`` (one 10x slower).

replica-kill: 4 sim replicas behind one gateway, closed-loop streaming load. The replica with the most requests in
flight is SIGKILLed while streams are running on it; the report says how many requests failed among those not yet streaming from it (goal 0), how
many of its in-flight streams the client saw complete correctly (continued on another replica), how long the
gateway took to eject it, and, after a restart on the same port, to re-admit it and route to it again.

replica-slow: the same cluster in two phases of equal length, healthy then with one replica throttled to 10% of
the CPU time (``Throttle``: SIGSTOP/SIGCONT, so its simulated GPU, its HTTP server and its load reports all run 10x
slower). The healthy phase is the baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

import aiohttp

from bench.chaos_cluster import ADMIN_TOKEN, Cluster, Proc, Throttle
from bench.chaos_load import Sent, closed_loop, failures, prompt, stream_chat, summary


async def poll_replica(session: aiohttp.ClientSession, gateway: str, replica_url: str) -> dict | None:
    try:
        async with session.get(gateway + "/admin/replicas", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                               timeout=aiohttp.ClientTimeout(total=2)) as r:
            data = await r.json()
    except (aiohttp.ClientError, TimeoutError):
        return None
    return next((x for x in data["replicas"] if x["url"] == replica_url), None)


async def busiest(session: aiohttp.ClientSession, gateway: str, cl: Cluster) -> Proc:
    """The replica with the most requests in flight from the gateway: the one whose death hurts most."""
    async with session.get(gateway + "/admin/replicas", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        data = await r.json()
    counts = {x["url"]: x["inflight"]["requests"] for x in data["replicas"]}
    return max(cl.replicas, key=lambda p: counts.get(p.url, 0))


async def wait_until(session: aiohttp.ClientSession, gateway: str, url: str, cond, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        state = await poll_replica(session, gateway, url)
        if state is not None and cond(state):
            return time.monotonic()
        await asyncio.sleep(0.01)
    return None


async def replica_kill(workers: int = 16, tokens: int = 100, warmup: float = 3.0, down: float = 3.0,
                       after: float = 4.0, replicas: int = 4, gateway_args: tuple = ()) -> dict:
    cl = Cluster(replicas=replicas, gateway_args=gateway_args).start()
    gw = cl.gateways[0].url
    rng = random.Random(0)
    stop = [False]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            load = asyncio.create_task(closed_loop(workers, lambda: stop[0],
                                                   lambda w: stream_chat(session, gw, tokens, prompt(rng))))
            await asyncio.sleep(warmup)
            victim = await busiest(session, gw, cl)
            t_kill = time.monotonic()
            victim.signal(signal.SIGKILL)
            t_ejected = await wait_until(session, gw, victim.url, lambda s: not s["routable"], 10.0)
            await asyncio.sleep(max(0.0, down - (time.monotonic() - t_kill)))
            victim.start()
            await asyncio.to_thread(victim.wait_healthy)
            t_healthy = time.monotonic()
            t_readmitted = await wait_until(session, gw, victim.url,
                                            lambda s: s["routable"] and s["breaker"] == "closed", 30.0)
            await asyncio.sleep(after)
            stop[0] = True
            sent: list[Sent] = await load
            metrics = await (await session.get(gw + "/metrics")).text()
    finally:
        cl.close()
    rid = victim.url.split("//")[1]
    in_flight = [s for s in sent if s.replica == rid and s.first_byte is not None and s.first_byte < t_kill
                 and s.end is not None and s.end > t_kill]
    others = [s for s in sent if s not in in_flight]
    after_readmit = [s for s in sent if t_readmitted and s.start > t_readmitted and s.replica == rid]
    before = summary([s for s in sent if s.end is not None and s.end < t_kill])  # the baseline, same run
    around = summary([s for s in sent if s.end is not None and s.end >= t_kill and s.start <= t_kill + down])
    return {
        "scenario": "replica-kill", "replicas": replicas, "workers": workers, "output_tokens": tokens,
        "load": summary(sent), "before_kill": before, "around_kill": around,
        "e2e_p99_ratio_around_vs_before": _ratio(around["e2e_p99_s"], before["e2e_p99_s"]),
        "failed_not_streaming": sum(not s.ok for s in others),
        "streams_in_flight_on_killed": len(in_flight),
        "streams_continued_ok": sum(s.ok for s in in_flight),
        "user_visible_failures": sum(not s.ok for s in sent),
        "ejected_after_s": None if t_ejected is None else t_ejected - t_kill,
        "readmitted_after_healthy_s": None if t_readmitted is None else t_readmitted - t_healthy,
        "requests_to_restarted_replica": len(after_readmit),
        "continuations": _metric(metrics, "foresight_gateway_stream_continuations_total"),
        "failures": failures(sent),
    }


def _metric(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key[len(name):] or "total"] = float(value)
    return out


async def replica_slow(workers: int = 12, tokens: int = 60, phase: float = 10.0, replicas: int = 4,
                       slowdown: float = 10.0, gateway_args: tuple = ()) -> dict:
    cl = Cluster(replicas=replicas, gateway_args=gateway_args).start()
    gw = cl.gateways[0].url
    slow = cl.replicas[-1]
    rng = random.Random(1)
    phases = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for name in ("healthy", "one_slow"):
                throttle = Throttle(slow, duty=1.0 / slowdown).start() if name == "one_slow" else None
                end = time.monotonic() + phase
                try:
                    sent = await closed_loop(workers, lambda e=end: time.monotonic() >= e,
                                             lambda w: stream_chat(session, gw, tokens, prompt(rng)))
                finally:
                    if throttle is not None:
                        throttle.stop()
                rid = slow.url.split("//")[1]
                phases[name] = {**summary(sent), "share_to_slow_replica": sum(s.replica == rid for s in sent)
                                / max(1, len(sent)), "failures": failures(sent)}
    finally:
        cl.close()
    h, s = phases["healthy"], phases["one_slow"]
    return {"scenario": "replica-slow", "replicas": replicas, "slowdown": slowdown, "workers": workers,
            "output_tokens": tokens, "phases": phases,
            "ttft_p99_ratio_vs_healthy": _ratio(s["ttft_p99_s"], h["ttft_p99_s"]),
            "e2e_p99_ratio_vs_healthy": _ratio(s["e2e_p99_s"], h["e2e_p99_s"]),
            "failed": h["failed"] + s["failed"]}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b
