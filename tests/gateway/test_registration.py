"""Replicas that register themselves in the store are found, used and dropped when their TTL lapses; API keys and
their hashes come from the store too."""

from __future__ import annotations

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from gateway.app import GATEWAY, build_app
from gateway.auth import digest
from gateway.config import GatewayConfig
from gateway.state import keys
from gateway.state.base import ReplicaInfo
from tests.gateway.fakes import FaultyBackend

CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


async def test_self_registered_replica_is_used_then_expires_and_store_keys_work(redis_url: str) -> None:
    backend = FaultyBackend(replica_id="self-reg")
    bserver = TestServer(backend.app(), host="127.0.0.1")
    await bserver.start_server()
    backend.url = str(bserver.make_url("")).rstrip("/")
    app = build_app(GatewayConfig(replicas=[], policy="round_robin", predictor="off", redis=redis_url,
                                  probe_interval=0.1))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    gw = app[GATEWAY]
    url = str(server.make_url("")).rstrip("/")
    try:
        await gw.store.register_replica(ReplicaInfo("self-reg", backend.url, ("mock",)), ttl=1.0)
        await gw.store.hash_set(keys.API_KEYS, {digest("sk-from-redis"): orjson.dumps({"name": "redis-user"})})
        gw.sync._tick = 0
        await gw.sync.step()
        assert gw.registry.get("self-reg") is not None and gw.auth.enabled
        async with aiohttp.ClientSession() as s:
            r = await s.post(url + "/v1/chat/completions", json=CHAT)
            assert r.status == 401
            r = await s.post(url + "/v1/chat/completions", json=CHAT,
                             headers={"Authorization": "Bearer sk-from-redis"})
            assert r.status == 200 and r.headers["X-Foresight-Replica"] == "self-reg"
        # The replica stops refreshing its registration: it disappears from the gateway.
        await gw.store.deregister_replica("self-reg")
        gw.sync._tick = 0
        await gw.sync.step()
        assert gw.registry.get("self-reg") is None
    finally:
        await server.close()
        await bserver.close()
