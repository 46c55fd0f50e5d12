"""Peers' in-flight counts pushed through pub/sub between polled syncs (gateway/state/peer_inflight.py)."""

from __future__ import annotations

import asyncio

import orjson

from gateway.registry import Registry
from gateway.routing.base import InflightCounts
from gateway.state.memory import MemoryStore
from gateway.state.peer_inflight import PeerInflight
from gateway.state.redis import RedisStore
from gateway.state.sync import StateSync


async def _until(cond, seconds: float = 10.0) -> bool:  # noqa: ANN001
    for _ in range(int(seconds / 0.005)):
        if cond():
            return True
        await asyncio.sleep(0.005)
    return cond()


async def test_two_gateways_see_each_others_counts_between_polls(redis_url: str) -> None:
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    registries = [Registry(), Registry()]
    for reg in registries:
        reg.add("http://127.0.0.1:9001", "r0")
        reg.add("http://127.0.0.1:9002", "r1")
    # Polling every 60 s: anything seen within the test came by push.
    syncs = [StateSync(s, reg, f"gw{i}", interval=60.0, push_interval=0.01)
             for i, (s, reg) in enumerate(zip(stores, registries, strict=True))]
    for s in syncs:
        s.start()
    try:
        await asyncio.sleep(0.2)  # the first polled round and the subscriptions
        for s in syncs:  # one more polled round, in which each gateway lists the other (so it has a peer)
            await s.step()
        a_r1, b_r1 = registries[0].get("r1"), registries[1].get("r1")
        a_r1.local.requests, a_r1.local.prefill_tokens = 3, 900.0  # gateway 0 dispatched three requests to r1
        assert await _until(lambda: b_r1.view.remote.requests == 3)
        assert b_r1.view.remote.prefill_tokens == 900.0 and registries[1].get("r0").view.remote.requests == 0
        a_r1.local.requests, a_r1.local.prefill_tokens = 0, 0.0  # ...and they finished
        assert await _until(lambda: b_r1.view.remote.requests == 0)
        assert syncs[1].peers is not None and syncs[1].peers.received >= 2
    finally:
        for s in syncs:
            await s.close()
        for st in stores:
            await st.close()


def test_pushed_views_win_while_fresh_and_expired_gateways_are_dropped() -> None:
    changes: list[dict] = []
    peers = PeerInflight(MemoryStore(), "me", lambda: [], changes.append, fresh_for=60.0)
    assert peers.apply(orjson.dumps({"gw": "a", "c": {"r0": [2, 100.0, 50.0]}}))
    assert changes[-1]["r0"].requests == 2
    assert not peers.apply(orjson.dumps({"gw": "me", "c": {"r0": [9, 0, 0]}}))  # its own message
    assert not peers.apply(b'{"gw": "b", "c": {"r0": "bad"}}')  # malformed: ignored, nothing raised
    # The polled round is older than a's fresh push; b is new; c's entry expired (absent from the poll).
    peers.views["c"] = (0.0, {"r1": InflightCounts(5)})
    remote = peers.merge_polled({"a": {"r0": InflightCounts(1)}, "b": {"r0": InflightCounts(4)},
                                 "me": {"r0": InflightCounts(7)}})
    assert remote["r0"].requests == 2 + 4 and "r1" not in remote
    peers.forget()
    assert peers.remote() == {}
    peers.apply(orjson.dumps({"gw": "a", "c": {"r0": [2, 100.0, 50.0]}}))
    # A fresh push from a gateway the poll does not list yet counts; once stale, only the poll stands.
    assert peers.apply(orjson.dumps({"gw": "d", "c": {"r2": [1, 0, 0]}}))
    assert peers.merge_polled({"a": {"r0": InflightCounts(1)}})["r2"].requests == 1
    peers.fresh_for = 0.0
    remote = peers.merge_polled({"a": {"r0": InflightCounts(1)}})
    assert remote["r0"].requests == 1 and "r2" not in remote


async def test_own_counts_are_pushed_only_when_they_change() -> None:
    store = MemoryStore()
    local = InflightCounts()
    peers = PeerInflight(store, "me", lambda: [("r0", local)], lambda _: None, interval=0.005)
    sub = await store.subscribe("inflight:push")
    peers.start()
    try:
        await asyncio.sleep(0.1)
        assert peers.published == 1  # the first (empty) view, then nothing while idle
        local.requests = 1
        assert await _until(lambda: peers.published == 2)
        await asyncio.sleep(0.05)
        assert peers.published == 2
        message = await asyncio.wait_for(sub.__aiter__().__anext__(), 1)
        assert orjson.loads(message) == {"gw": "me", "c": {}}
    finally:
        await peers.close()
        await sub.close()


async def test_a_gateway_alone_pushes_nothing_until_a_peer_appears() -> None:
    store = MemoryStore()
    local = InflightCounts(2)
    peers = PeerInflight(store, "me", lambda: [("r0", local)], lambda _: None, interval=0.005)
    peers.merge_polled({"me": {"r0": local}})  # the poll lists only this gateway
    peers.start()
    try:
        await asyncio.sleep(0.1)
        assert peers.published == 0
        peers.merge_polled({"me": {"r0": local}, "other": {}})
        assert await _until(lambda: peers.published == 1)
    finally:
        await peers.close()
