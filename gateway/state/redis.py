"""The Redis state store (``--redis URL``): shared by every gateway and replica of a deployment.

Liveness entries are one key per writer with a real TTL (``SET key value PX ttl``), plus a sorted set per kind
scored by expiry time so a reader lists live writers without SCAN; stale index members are pruned on read.
Short socket timeouts: a dead Redis costs a background task a fraction of a second, never a request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.routing.base import InflightCounts
from gateway.state import keys
from gateway.state.base import ReplicaInfo, StateStore, StoreUnavailable, Subscription

T = TypeVar("T")


class _RedisSubscription(Subscription):
    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub

    async def _iter(self) -> AsyncIterator[bytes]:
        try:
            async for msg in self.pubsub.listen():
                if msg.get("type") == "message":
                    yield msg["data"]
        except (RedisError, OSError) as e:
            raise StoreUnavailable(str(e)) from e

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def close(self) -> None:
        try:
            await self.pubsub.aclose()
        except (RedisError, OSError):
            pass


class RedisStore(StateStore):
    name = "redis"

    def __init__(self, url: str, key_prefix: str = keys.DEFAULT_PREFIX, timeout: float = 0.5) -> None:
        super().__init__(key_prefix)
        self.url = url
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=5,
        )

    def k(self, key: str) -> str:
        return self.key_prefix + key

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"redis: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            pass

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def _put_indexed(self, index: str, member: str, key: str, value: bytes, ttl: float) -> None:
        expiry = time.time() + ttl
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.k(key), value, px=max(1, int(ttl * 1000)))
            pipe.zadd(self.k(index), {member: expiry})
            await pipe.execute()

    async def _get_indexed(self, index: str, key_of: Callable[[str], str]) -> dict[str, bytes]:
        now = time.time()
        members = [m.decode() for m in await self.client.zrangebyscore(self.k(index), now, "+inf")]
        await self.client.zremrangebyscore(self.k(index), "-inf", now)
        if not members:
            return {}
        values = await self.client.mget([self.k(key_of(m)) for m in members])
        return {m: v for m, v in zip(members, values, strict=True) if v is not None}

    async def put_inflight(self, gateway_id: str, counts: Mapping[str, InflightCounts], ttl: float) -> None:
        body = orjson.dumps({rid: c.as_dict() for rid, c in counts.items()})
        await self._call(lambda: self._put_indexed(keys.INFLIGHT_INDEX, gateway_id, keys.inflight(gateway_id),
                                                   body, ttl))

    async def get_inflight(self) -> dict[str, dict[str, InflightCounts]]:
        raw = await self._call(lambda: self._get_indexed(keys.INFLIGHT_INDEX, keys.inflight))
        out: dict[str, dict[str, InflightCounts]] = {}
        for gw, value in raw.items():
            try:
                data = orjson.loads(value)
                out[gw] = {rid: InflightCounts(int(c["requests"]), float(c["prefill_tokens"]),
                                               float(c["decode_tokens"])) for rid, c in data.items()}
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue  # a malformed entry from another writer must not break the reader
        return out

    async def put_load_report(self, replica_id: str, report: Mapping[str, object], ttl: float) -> None:
        body = orjson.dumps(dict(report))
        await self._call(lambda: self._put_indexed(keys.LOAD_INDEX, replica_id, keys.load(replica_id), body, ttl))

    async def get_load_reports(self) -> dict[str, dict[str, object]]:
        raw = await self._call(lambda: self._get_indexed(keys.LOAD_INDEX, keys.load))
        out = {}
        for rid, value in raw.items():
            try:
                report = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(report, dict):
                out[rid] = report
        return out

    async def register_replica(self, info: ReplicaInfo, ttl: float) -> None:
        body = orjson.dumps({"replica_id": info.replica_id, "url": info.url, "models": list(info.models)})
        await self._call(lambda: self._put_indexed(keys.REPLICA_INDEX, info.replica_id,
                                                   keys.replica(info.replica_id), body, ttl))

    async def deregister_replica(self, replica_id: str) -> None:
        async def run() -> None:
            await self.client.delete(self.k(keys.replica(replica_id)))
            await self.client.zrem(self.k(keys.REPLICA_INDEX), replica_id)
        await self._call(run)

    async def list_replicas(self) -> list[ReplicaInfo]:
        raw = await self._call(lambda: self._get_indexed(keys.REPLICA_INDEX, keys.replica))
        out = []
        for value in raw.values():
            try:
                d = orjson.loads(value)
                out.append(ReplicaInfo(str(d["replica_id"]), str(d["url"]), tuple(d.get("models") or ())))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
        return out

    async def kv_set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        px = None if ttl is None else max(1, int(ttl * 1000))
        await self._call(lambda: self.client.set(self.k(key), value, px=px))

    async def kv_get(self, key: str) -> bytes | None:
        return await self._call(lambda: self.client.get(self.k(key)))

    async def kv_delete(self, key: str) -> None:
        await self._call(lambda: self.client.delete(self.k(key)))

    async def hash_set(self, key: str, mapping: Mapping[str, bytes], ttl: float | None = None) -> None:
        async def run() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(self.k(key), mapping=dict(mapping))
                if ttl is not None:
                    pipe.pexpire(self.k(key), max(1, int(ttl * 1000)))
                await pipe.execute()
        if mapping:
            await self._call(run)

    async def hash_get_all(self, key: str) -> dict[str, bytes]:
        raw = await self._call(lambda: self.client.hgetall(self.k(key)))
        return {f.decode(): v for f, v in raw.items()}

    async def hash_delete(self, key: str, *fields: str) -> None:
        if fields:
            await self._call(lambda: self.client.hdel(self.k(key), *fields))

    async def incr(self, key: str, amount: float, ttl: float | None = None) -> float:
        async def run() -> float:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.incrbyfloat(self.k(key), amount)
                if ttl is not None:
                    pipe.pexpire(self.k(key), max(1, int(ttl * 1000)))
                result = await pipe.execute()
            return float(result[0])
        return await self._call(run)

    async def publish(self, channel: str, message: bytes) -> None:
        await self._call(lambda: self.client.publish(self.k(channel), message))

    async def subscribe(self, channel: str) -> Subscription:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await self._call(lambda: pubsub.subscribe(self.k(channel)))
        return _RedisSubscription(pubsub)


def create_store(redis_url: str | None, key_prefix: str = keys.DEFAULT_PREFIX) -> StateStore:
    """The store for ``--redis`` (None or empty: in-memory)."""
    if not redis_url:
        from gateway.state.memory import MemoryStore

        return MemoryStore(key_prefix)
    return RedisStore(redis_url, key_prefix)
