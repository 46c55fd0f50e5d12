"""The in-process state store: the default for a single gateway (and what `foresight up` uses).

Same semantics as the Redis store, TTLs included, so a test can run two gateways in one process on one
``MemoryStore`` and see them share state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

from gateway.routing.base import InflightCounts
from gateway.state import keys
from gateway.state.base import ReplicaInfo, StateStore, Subscription


class _MemorySubscription(Subscription):
    def __init__(self, store: MemoryStore, channel: str) -> None:
        self.store, self.channel = store, channel
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=10_000)

    async def _iter(self) -> AsyncIterator[bytes]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def close(self) -> None:
        subs = self.store._subs.get(self.channel, [])
        if self in subs:
            subs.remove(self)
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            pass


class MemoryStore(StateStore):
    name = "memory"

    def __init__(self, key_prefix: str = keys.DEFAULT_PREFIX) -> None:
        super().__init__(key_prefix)
        self._data: dict[str, tuple[object, float | None]] = {}  # key -> (value, expiry monotonic or None)
        self._subs: dict[str, list[_MemorySubscription]] = {}

    def _get(self, key: str) -> object | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expiry = item
        if expiry is not None and expiry <= time.monotonic():
            del self._data[key]
            return None
        return value

    def _put(self, key: str, value: object, ttl: float | None) -> None:
        self._data[key] = (value, None if ttl is None else time.monotonic() + ttl)

    def _live(self, prefix: str) -> dict[str, object]:
        out = {}
        for key in [k for k in self._data if k.startswith(prefix)]:
            value = self._get(key)
            if value is not None:
                out[key[len(prefix):]] = value
        return out

    async def ping(self) -> bool:
        return True

    async def put_inflight(self, gateway_id: str, counts: Mapping[str, InflightCounts], ttl: float) -> None:
        snapshot = {rid: InflightCounts(c.requests, c.prefill_tokens, c.decode_tokens) for rid, c in counts.items()}
        self._put(keys.inflight(gateway_id), snapshot, ttl)

    async def get_inflight(self) -> dict[str, dict[str, InflightCounts]]:
        return self._live(keys.inflight(""))  # type: ignore[return-value]

    async def put_load_report(self, replica_id: str, report: Mapping[str, object], ttl: float) -> None:
        self._put(keys.load(replica_id), dict(report), ttl)

    async def get_load_reports(self) -> dict[str, dict[str, object]]:
        return self._live(keys.load(""))  # type: ignore[return-value]

    async def register_replica(self, info: ReplicaInfo, ttl: float) -> None:
        self._put(keys.replica(info.replica_id), info, ttl)

    async def deregister_replica(self, replica_id: str) -> None:
        self._data.pop(keys.replica(replica_id), None)

    async def list_replicas(self) -> list[ReplicaInfo]:
        return list(self._live(keys.replica("")).values())  # type: ignore[arg-type]

    async def kv_set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._put("kv:" + key, value, ttl)

    async def kv_get(self, key: str) -> bytes | None:
        return self._get("kv:" + key)  # type: ignore[return-value]

    async def kv_delete(self, key: str) -> None:
        self._data.pop("kv:" + key, None)

    async def hash_set(self, key: str, mapping: Mapping[str, bytes], ttl: float | None = None) -> None:
        current = self._get("h:" + key) or {}
        assert isinstance(current, dict)
        current.update(mapping)
        self._put("h:" + key, current, ttl if ttl is not None else self._remaining("h:" + key))

    def _remaining(self, key: str) -> float | None:
        item = self._data.get(key)
        return None if item is None or item[1] is None else max(0.0, item[1] - time.monotonic())

    async def hash_get_all(self, key: str) -> dict[str, bytes]:
        return dict(self._get("h:" + key) or {})  # type: ignore[call-overload]

    async def hash_delete(self, key: str, *fields: str) -> None:
        current = self._get("h:" + key)
        if isinstance(current, dict):
            for f in fields:
                current.pop(f, None)

    async def incr(self, key: str, amount: float, ttl: float | None = None) -> float:
        total = float(self._get("n:" + key) or 0.0) + amount  # type: ignore[arg-type]
        self._put("n:" + key, total, ttl if ttl is not None else self._remaining("n:" + key))
        return total

    async def publish(self, channel: str, message: bytes) -> None:
        for sub in list(self._subs.get(channel, [])):
            try:
                sub.queue.put_nowait(message)
            except asyncio.QueueFull:  # a stalled subscriber loses messages rather than blocking publishers
                pass

    async def subscribe(self, channel: str) -> Subscription:
        sub = _MemorySubscription(self, channel)
        self._subs.setdefault(channel, []).append(sub)
        return sub
