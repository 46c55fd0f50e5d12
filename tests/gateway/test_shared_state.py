"""Two gateways on one store see each other's in-flight load; with Redis gone they keep serving on local views."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.app import GATEWAY, build_app
from gateway.config import GatewayConfig
from tests.gateway.fakes import FaultyBackend
from tests.helpers.redis_server import RedisServer

CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


async def start_backends(stack: AsyncExitStack, n: int) -> list[FaultyBackend]:
    out = []
    for i in range(n):
        b = FaultyBackend(replica_id=f"b{i}")
        s = TestServer(b.app(), host="127.0.0.1")
        await s.start_server()
        stack.push_async_callback(s.close)
        stack.callback(b.unhang.set)  # runs before the server closes
        b.url = str(s.make_url("")).rstrip("/")
        out.append(b)
    return out


async def start_gateway(stack: AsyncExitStack, backends, redis_url: str, gid: str):
    cfg = GatewayConfig(replicas=[b.url for b in backends], policy="least_load", predictor="off", redis=redis_url,
                        gateway_id=gid, sync_interval=0.05, probe_interval=0.2)
    app = build_app(cfg)
    s = TestServer(app, host="127.0.0.1")
    await s.start_server()
    stack.push_async_callback(s.close)
    return str(s.make_url("")).rstrip("/"), app[GATEWAY]


async def wait_for(pred, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


async def test_two_gateways_see_each_others_inflight(redis_url: str) -> None:
    async with AsyncExitStack() as stack:
        backends = await start_backends(stack, 2)
        for b in backends:
            b.fault = "hang"
        url_a, gw_a = await start_gateway(stack, backends, redis_url, "gw-a")
        _url_b, gw_b = await start_gateway(stack, backends, redis_url, "gw-b")
        session = await stack.enter_async_context(aiohttp.ClientSession())
        tasks = [asyncio.create_task(session.post(url_a + "/v1/chat/completions", json=CHAT)) for _ in range(6)]
        assert await wait_for(lambda: sum(r.local.requests for r in gw_a.registry) == 6)
        # gw-b's routing view (what its policy sees) counts gw-a's requests as remote load.
        assert await wait_for(lambda: sum(r.view.remote.requests for r in gw_b.registry) == 6)
        assert all(r.view.inflight == 3 for r in gw_b.registry)  # least_load spread them 3/3
        assert all(r.view.remote.requests == 0 for r in gw_a.registry)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert await wait_for(lambda: sum(r.view.remote.requests for r in gw_b.registry) == 0)


async def test_requests_keep_succeeding_with_redis_stopped() -> None:
    redis = RedisServer().start()
    try:
        async with AsyncExitStack() as stack:
            backends = await start_backends(stack, 2)
            url_a, gw_a = await start_gateway(stack, backends, redis.url, "gw-a")
            url_b, gw_b = await start_gateway(stack, backends, redis.url, "gw-b")
            session = await stack.enter_async_context(aiohttp.ClientSession())

            async def burst(n: int) -> list[int]:
                rs = await asyncio.gather(*(session.post(u + "/v1/chat/completions", json={**CHAT, "stream": i % 2 == 0})
                                            for i in range(n) for u in (url_a, url_b)))
                return [r.status for r in rs]

            assert set(await burst(5)) == {200}
            assert gw_a.sync.healthy and gw_b.sync.healthy
            port = redis.port
            redis.stop()
            assert await wait_for(lambda: not gw_a.sync.healthy)
            assert set(await burst(10)) == {200}
            health = await (await session.get(url_a + "/health")).json()
            assert health["store_ok"] is False
            # Redis comes back on the same port: the gateways catch up and share state again.
            redis = RedisServer(port=port).start()
            assert await wait_for(lambda: gw_a.sync.healthy and gw_b.sync.healthy)
            assert set(await burst(5)) == {200}
    finally:
        redis.stop()
