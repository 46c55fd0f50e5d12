"""Traffic for the local compose cluster: ordinary requests, client errors, and a replica failure that the
gateways must absorb (retries on another replica, breaker trips, 503 when nothing is left, re-admission after a
restart), so that every dashboard panel has something real to show."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.helpers.procs import ProcessManager
from tests.observability.cluster import Cluster, wait_healthy

SYSTEM = {"role": "system", "content": "You are a helpful assistant. " * 8}


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat(base_url: str, model: str, text: str, session: str | None = None) -> str:
    """One small completion; returns the replica that served it (the gateway's X-Foresight-Replica)."""
    headers = {"X-Session-Id": session} if session else {}
    raw = client(base_url).chat.completions.with_raw_response.create(
        model=model, messages=[SYSTEM, {"role": "user", "content": text}], max_tokens=8, extra_headers=headers)
    assert raw.parse().choices[0].message.content is not None
    return raw.headers["X-Foresight-Replica"]


def send_traffic(base_url: str, model: str, n: int = 8) -> None:
    """Plain and streamed chat completions, plus client errors (404, 400)."""
    c = client(base_url)
    for i in range(n):
        messages = [SYSTEM, {"role": "user", "content": f"Question number {i}: say something."}]
        r = c.chat.completions.create(model=model, messages=messages, max_tokens=12)
        assert r.choices[0].message.content is not None
        stream = c.chat.completions.create(model=model, messages=messages, max_tokens=12, stream=True,
                                           stream_options={"include_usage": True})
        assert sum(1 for _ in stream) > 1
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=[SYSTEM], max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=model, messages=[], max_tokens=4)


def metric_total(base_url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def restart(c: Cluster, procs: ProcessManager, name: str) -> None:
    svc = c.services[name]
    proc = procs.spawn(svc.cmd, svc.port, env=svc.env, wait=False)
    c.running[name] = proc
    wait_healthy(svc, proc, 60)


def kill(c: Cluster, name: str) -> None:
    proc = c.running[name]
    proc.signal(signal.SIGKILL)
    assert proc.proc is not None
    proc.proc.wait(10)


def fail_replicas(c: Cluster, procs: ProcessManager, model: str) -> None:
    """Kill one replica under a sticky session pinned to it (the gateways retry on the other one and trip its
    breaker), then the other (503: nothing healthy is left), then restart both and wait until both gateways
    route to them again."""
    from gateway.registry import replica_id_from_url

    gateways = [c.url(n) for n in sorted(c.running) if n.startswith("gateway-") and n != "gateway-lb"]
    replicas = {replica_id_from_url(c.url(n)): n for n in sorted(c.running) if n.startswith("replica-")}
    victim_id, victim = sorted(replicas.items())[-1]
    session = next(s for s in (f"session-{i}" for i in range(64))
                   if all(chat(gw, model, "pin", s) == victim_id for gw in gateways))
    with ThreadPoolExecutor(len(gateways)) as pool:
        for _ in range(3):  # a health probe (every 0.5 s) may notice the kill before the request does
            kill(c, victim)
            served = list(pool.map(lambda gw: chat(gw, model, "after the kill", session), gateways))
            assert victim_id not in served
            if sum(metric_total(gw, "foresight_gateway_retries_total") for gw in gateways) > 0:
                break
            restart(c, procs, victim)
            for gw in gateways:
                deadline = time.monotonic() + 30
                while chat(gw, model, "re-admitted?", session) != victim_id and time.monotonic() < deadline:
                    time.sleep(0.2)
    assert sum(metric_total(gw, "foresight_gateway_retries_total") for gw in gateways) > 0
    for name in replicas.values():
        if c.running[name].alive():
            kill(c, name)
    for gw in gateways:
        deadline = time.monotonic() + 30
        while True:
            try:
                chat(gw, model, "nothing left")
            except openai.APIStatusError as e:
                if e.status_code == 503:  # 502 first, while a breaker has not yet seen the dead replica
                    break
            assert time.monotonic() < deadline, "the gateway kept answering without replicas"
            time.sleep(0.2)
    for name in replicas.values():
        restart(c, procs, name)
    for gw in gateways:  # both replicas re-admitted by both gateways
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while seen != set(replicas) and time.monotonic() < deadline:
            try:
                seen.add(chat(gw, model, f"back {len(seen)}", f"s{time.monotonic()}"))
            except openai.APIStatusError:
                time.sleep(0.2)
        assert seen == set(replicas), seen
