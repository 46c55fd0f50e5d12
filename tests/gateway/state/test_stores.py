"""Both state stores honour one contract: TTLs, in-flight sums, load reports, registration, generic kv/hash/pubsub."""

from __future__ import annotations

import asyncio

import pytest

from gateway.routing.base import InflightCounts
from gateway.state.base import ReplicaInfo, StateStore, StoreUnavailable
from gateway.state.memory import MemoryStore
from gateway.state.redis import RedisStore, create_store


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> StateStore:
    if request.param == "memory":
        s: StateStore = MemoryStore()
    else:
        s = RedisStore(request.getfixturevalue("redis_url"))
    await s.start()
    yield s
    await s.close()


async def test_inflight_per_gateway_with_ttl(store: StateStore) -> None:
    await store.put_inflight("gw-a", {"r1": InflightCounts(3, 100.0, 50.0)}, ttl=0.3)
    await store.put_inflight("gw-b", {"r1": InflightCounts(1, 0.0, 20.0)}, ttl=30)
    seen = await store.get_inflight()
    assert seen["gw-a"]["r1"] == InflightCounts(3, 100.0, 50.0)
    assert seen["gw-b"]["r1"].requests == 1
    await asyncio.sleep(0.45)
    assert set(await store.get_inflight()) == {"gw-b"}


async def test_load_reports_and_registration_expire(store: StateStore) -> None:
    await store.put_load_report("r1", {"replica_id": "r1", "num_running": 2}, ttl=0.3)
    await store.register_replica(ReplicaInfo("r1", "http://x:1", ("tiny",)), ttl=0.3)
    await store.register_replica(ReplicaInfo("r2", "http://x:2", ("tiny",)), ttl=30)
    assert (await store.get_load_reports())["r1"]["num_running"] == 2
    assert {r.replica_id for r in await store.list_replicas()} == {"r1", "r2"}
    await asyncio.sleep(0.45)
    assert await store.get_load_reports() == {}
    assert [r.replica_id for r in await store.list_replicas()] == ["r2"]
    await store.deregister_replica("r2")
    assert await store.list_replicas() == []


async def test_generic_kv_hash_counter(store: StateStore) -> None:
    await store.kv_set("a", b"1", ttl=0.2)
    assert await store.kv_get("a") == b"1"
    await store.hash_set("h", {"x": b"1", "y": b"2"})
    await store.hash_set("h", {"y": b"3"})
    await store.hash_delete("h", "x")
    assert await store.hash_get_all("h") == {"y": b"3"}
    assert await store.incr("c", 1.5) == 1.5
    assert await store.incr("c", 2) == 3.5
    await asyncio.sleep(0.3)
    assert await store.kv_get("a") is None
    await store.kv_delete("c")


async def test_pubsub_delivers_in_order(store: StateStore) -> None:
    sub = await store.subscribe("deltas")
    await asyncio.sleep(0.05)
    for i in range(3):
        await store.publish("deltas", str(i).encode())
    got = []
    async for msg in sub:
        got.append(msg)
        if len(got) == 3:
            break
    await sub.close()
    assert got == [b"0", b"1", b"2"]


async def test_redis_down_raises_store_unavailable() -> None:
    from tests.helpers.procs import free_port

    store = create_store(f"redis://127.0.0.1:{free_port()}/0")
    assert not await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.get_inflight()
    with pytest.raises(StoreUnavailable):
        await store.put_inflight("g", {}, ttl=1)
    await store.close()
