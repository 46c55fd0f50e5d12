"""The gateway as a real process in front of 3 real simulated replicas and a real Redis, driven by the openai SDK.

One cluster per module (replica start-up dominates the cost): SDK round trips, two gateways sharing in-flight
load through Redis, a gateway whose own Redis is stopped mid-test, and a replica SIGKILLed under load then
restarted (last, since it disturbs the cluster).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from tests.helpers.procs import ProcessManager, ProjectProcess, foresight_cmd, free_port
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.slow
MODEL = "tiny"
ADMIN = "e2e-admin"


@dataclass
class Cluster:
    manager: ProcessManager
    replicas: list[ProjectProcess]
    gateways: list[ProjectProcess]
    redis_url: str

    def replica_cmd(self, i: int, port: int) -> list[str]:
        return replica_cmd(i, port, self.redis_url)


def replica_cmd(i: int, port: int, redis_url: str) -> list[str]:
    return foresight_cmd("replica", "--runner", "sim", "--model", "tiny", "--served-model-name", MODEL, "--port",
                         str(port), "--replica-id", f"r{i}", "--redis", redis_url)


def gateway_cmd(port: int, replicas: list[str], redis_url: str, gid: str) -> list[str]:
    cmd = ["gateway", "--port", str(port), "--redis", redis_url, "--gateway-id", gid, "--policy", "least_load",
           "--admin-token", ADMIN, "--probe-interval", "0.2", "--breaker-backoff", "0.5", "--predictor", "off"]
    for url in replicas:
        cmd += ["--replica", url]
    return foresight_cmd(*cmd)


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer) -> Iterator[Cluster]:
    manager = ProcessManager()
    try:
        ports = [free_port() for _ in range(3)]
        replicas = [manager.spawn(replica_cmd(i, p, redis_server.url), p, wait=False) for i, p in enumerate(ports)]
        for r in replicas:
            r.wait_healthy(120)
        gateways = []
        for gid in ("gw-a", "gw-b"):
            port = free_port()
            gateways.append(manager.spawn(gateway_cmd(port, [r.url for r in replicas], redis_server.url, gid), port,
                                          health_path="/ready", timeout=60))
        yield Cluster(manager, replicas, gateways, redis_server.url)
    finally:
        manager.cleanup()


def client(gw: ProjectProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def admin(gw: ProjectProcess) -> dict[str, Any]:
    req = urllib.request.Request(gw.url + "/admin/replicas", headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_until(pred, timeout: float = 30.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return pred()


def chat(c: openai.OpenAI, out_tokens: int = 8, **kw: Any):
    return c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}],
                                     max_tokens=max(256, out_tokens), extra_headers={"X-Sim-Output-Tokens": str(out_tokens)}, **kw)


def test_openai_sdk_through_the_gateway(cluster: Cluster) -> None:
    c = client(cluster.gateways[0])
    assert [m.id for m in c.models.list().data] == [MODEL]
    r = chat(c, 5)
    assert r.choices[0].message.content and r.usage.completion_tokens == 5
    chunks = list(chat(c, 6, stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    done = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16,
                                extra_headers={"X-Sim-Output-Tokens": "4"})
    assert done.choices[0].text and done.usage.completion_tokens == 4
    streamed = list(c.completions.create(model=MODEL, prompt="Once", max_tokens=16, stream=True,
                                         stream_options={"include_usage": True},
                                         extra_headers={"X-Sim-Output-Tokens": "3"}))
    assert streamed[-1].usage.completion_tokens == 3
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=MODEL, messages=[])
    metrics = urllib.request.urlopen(cluster.gateways[0].url + "/metrics", timeout=10).read().decode()
    assert 'foresight_gateway_requests_total{replica="127.0.0.1' in metrics
    assert "foresight_gateway_ttft_seconds_bucket" in metrics


def test_two_gateways_share_inflight_load(cluster: Cluster) -> None:
    gw_a, gw_b = cluster.gateways
    c = client(gw_a)
    with ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(chat, c, 600) for _ in range(9)]  # ~5 s of simulated decoding each
        # gw-b has sent nothing, yet its routing view counts gw-a's 9 requests as remote load.
        seen = wait_until(lambda: sum(r["remote_inflight"]["requests"] for r in admin(gw_b)["replicas"]) == 9,
                          timeout=20)
        local_b = sum(r["inflight"]["requests"] for r in admin(gw_b)["replicas"])
        for f in futures:
            assert f.result().usage.completion_tokens == 600
    assert seen and local_b == 0
    assert wait_until(lambda: sum(r["remote_inflight"]["requests"] for r in admin(gw_b)["replicas"]) == 0, 10)


def test_requests_keep_succeeding_when_redis_stops(cluster: Cluster) -> None:
    own = RedisServer().start()
    port = free_port()
    try:
        gw = cluster.manager.spawn(gateway_cmd(port, [r.url for r in cluster.replicas], own.url, "gw-own"), port,
                                   health_path="/ready", timeout=60)
        c = client(gw)
        assert chat(c, 3).usage.completion_tokens == 3
        own.stop()
        assert wait_until(lambda: not json.loads(urllib.request.urlopen(gw.url + "/health").read())["store_ok"])
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: chat(c, 3, stream=i % 2 == 0), range(12)))
        assert len(results) == 12
    finally:
        own.stop()


def test_replica_sigkill_under_load_then_readmitted(cluster: Cluster) -> None:
    gw = cluster.gateways[0]
    c = client(gw)
    victim = cluster.replicas[0]
    victim_id = victim.url.split("//")[1]
    errors: list[BaseException] = []
    done = []

    def one(i: int) -> None:
        try:
            r = chat(c, 40)  # non-streaming: no byte reaches the client before the answer, so it is retried
            done.append(r.usage.completion_tokens)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    assert wait_until(lambda: any(r["inflight"]["requests"] for r in admin(gw)["replicas"] if r["id"] == victim_id),
                      timeout=10, every=0.02)
    victim.signal(signal.SIGKILL)
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert done == [40] * 24
    state = {r["id"]: r for r in admin(gw)["replicas"]}
    # Ejected: the breaker is open (or, once its backoff elapsed, half-open waiting for a trial that fails).
    assert state[victim_id]["breaker"] in ("open", "half_open")
    # Restart it on the same port: the prober re-admits it and traffic reaches it again.
    port = victim.port
    victim.proc.wait(10)
    cluster.replicas[0] = cluster.manager.spawn(cluster.replica_cmd(0, port), port, timeout=120)
    assert wait_until(lambda: {r["id"]: r for r in admin(gw)["replicas"]}[victim_id]["breaker"] == "closed", 30)
    def victim_served() -> float:
        text = urllib.request.urlopen(gw.url + "/metrics", timeout=10).read().decode()
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                   if ln.startswith("foresight_gateway_requests_total") and victim_id in ln and 'status="200"' in ln)

    before = victim_served()
    for _ in range(60):  # least_load breaks ties at random: the re-admitted replica gets its share
        chat(c, 2)
        if victim_served() > before:
            break
    assert victim_served() > before
