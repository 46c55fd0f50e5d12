"""Admin API (list, add, drain, remove), admission limits with Retry-After, rate limits, sticky sessions."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from gateway.app import GATEWAY
from tests.gateway.fakes import FaultyBackend, cluster

ADMIN = {"Authorization": "Bearer adm"}
CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


async def test_admin_list_add_drain_remove() -> None:
    async with cluster(2, admin_token="adm") as (url, backends, app):
        gw = app[GATEWAY]
        async with aiohttp.ClientSession() as s:
            listing = await (await s.get(url + "/admin/replicas", headers=ADMIN)).json()
            assert len(listing["replicas"]) == 2 and listing["policy"] == "round_robin"
            assert {r["breaker"] for r in listing["replicas"]} == {"closed"}
            assert all(r["load"]["model"] == "mock" for r in listing["replicas"])
            first = listing["replicas"][0]["id"]

            # Drain: no new requests go there.
            r = await s.post(url + f"/admin/replicas/{first}/drain", headers=ADMIN)
            assert r.status == 200 and (await r.json())["drained"] is True
            for _ in range(4):
                resp = await s.post(url + "/v1/chat/completions", json=CHAT)
                assert resp.headers["X-Foresight-Replica"] != first
            await s.post(url + f"/admin/replicas/{first}/undrain", headers=ADMIN)
            served = Counter()
            for _ in range(4):
                resp = await s.post(url + "/v1/chat/completions", json=CHAT)
                served[resp.headers["X-Foresight-Replica"]] += 1
            assert served[first] == 2

            # Add a third replica at runtime; it is probed and used.
            from aiohttp.test_utils import TestServer

            extra = FaultyBackend(replica_id="extra")
            server = TestServer(extra.app(), host="127.0.0.1")
            await server.start_server()
            extra_url = str(server.make_url("")).rstrip("/")
            r = await s.post(url + "/admin/replicas", json={"url": extra_url, "id": "extra"}, headers=ADMIN)
            assert r.status == 201 and (await r.json())["models"] == ["mock"]
            for _ in range(6):
                await s.post(url + "/v1/chat/completions", json=CHAT)
            assert extra.seen == 2

            r = await s.delete(url + "/admin/replicas/extra", headers=ADMIN)
            assert r.status == 200 and gw.registry.get("extra") is None
            await server.close()


async def test_drain_waits_for_inflight() -> None:
    async with cluster(1, admin_token="adm") as (url, backends, app):
        backends[0].delay_s = 0.3
        rid = next(iter(app[GATEWAY].registry)).id
        async with aiohttp.ClientSession() as s:
            pending = asyncio.create_task(s.post(url + "/v1/chat/completions", json=CHAT))
            await asyncio.sleep(0.1)
            r = await s.post(url + f"/admin/replicas/{rid}/drain?wait=5", headers=ADMIN)
            assert (await r.json())["drained"] is True
            assert (await pending).status == 200


async def test_per_replica_limit_queue_timeout_gives_503_retry_after() -> None:
    async with cluster(1, max_inflight_per_replica=1, queue_timeout=0.3) as (url, backends, _app):
        backends[0].delay_s = 1.0
        async with aiohttp.ClientSession() as s:
            first = asyncio.create_task(s.post(url + "/v1/chat/completions", json=CHAT))
            await asyncio.sleep(0.1)
            r = await s.post(url + "/v1/chat/completions", json=CHAT)
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            assert (await r.json())["error"]["code"] == "queue_timeout"
            assert (await first).status == 200


async def test_full_queue_gives_429() -> None:
    async with cluster(1, max_inflight=1, queue_size=0) as (url, backends, _app):
        backends[0].delay_s = 0.5
        async with aiohttp.ClientSession() as s:
            first = asyncio.create_task(s.post(url + "/v1/chat/completions", json=CHAT))
            await asyncio.sleep(0.1)
            r = await s.post(url + "/v1/chat/completions", json=CHAT)
            assert r.status == 429 and "Retry-After" in r.headers
            assert (await first).status == 200


async def test_no_healthy_replica_gives_503(tmp_path) -> None:
    async with cluster(2, breaker_backoff=30) as (url, backends, app):
        for r in app[GATEWAY].registry:
            r.breaker.trip()
        async with aiohttp.ClientSession() as s:
            r = await s.post(url + "/v1/chat/completions", json=CHAT)
            assert r.status == 503 and "Retry-After" in r.headers
            assert (await s.get(url + "/ready")).status == 503


async def test_rate_limited_key_gets_429(tmp_path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-slow rate=0.01 burst=2\n")
    async with cluster(1, api_keys=str(keys)) as (url, _b, _app):
        async with aiohttp.ClientSession() as s:
            statuses = [(await s.post(url + "/v1/chat/completions", json=CHAT,
                                      headers={"Authorization": "Bearer sk-slow"})).status for _ in range(3)]
            r = await s.post(url + "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-slow"})
            metrics = await (await s.get(url + "/metrics")).text()
        assert statuses == [200, 200, 429] and int(r.headers["Retry-After"]) >= 1
        assert "sk-slow" not in metrics


async def test_sticky_sessions_stick_until_replica_ejected() -> None:
    async with cluster(3) as (url, backends, app):
        async with aiohttp.ClientSession() as s:
            async def where(session: str) -> str:
                r = await s.post(url + "/v1/chat/completions", json=CHAT, headers={"X-Session-Id": session})
                assert r.status == 200
                return r.headers["X-Foresight-Replica"]

            homes = {f"user-{i}": await where(f"user-{i}") for i in range(12)}
            for sid, home in homes.items():
                assert await where(sid) == home
            assert len(set(homes.values())) > 1
            sid, home = next(iter(homes.items()))
            app[GATEWAY].registry.get(home).breaker.trip()
            assert await where(sid) != home


async def test_debug_header_explains_decision() -> None:
    async with cluster(2, policy="least_load") as (url, _b, _app):
        async with aiohttp.ClientSession() as s:
            r = await s.post(url + "/v1/chat/completions", json=CHAT, headers={"X-Foresight-Debug": "1"})
            assert "least_load" in r.headers["X-Foresight-Route"] and "inflight=" in r.headers["X-Foresight-Route"]
