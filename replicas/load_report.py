"""Publishing the replica's load report and registration to Redis (DESIGN.md sections 1 and 3).

Every ``load_interval_s`` (~100 ms) the replica writes, with the key names of ``gateway/state/keys.py`` (the
single source of truth shared with the gateway's Redis store), under the configured prefix:

- ``load:{replica_id}``: the ``/load`` JSON, TTL ``load_ttl_s``; ``loads``: zset replica_id -> expiry;
- ``replica:{replica_id}``: ``{"replica_id", "url", "models"}``, same TTL; ``replicas``: zset -> expiry.

It runs in the background; a Redis failure is logged (once per outage) and retried on the next tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.state import keys

log = logging.getLogger(__name__)


class LoadPublisher:
    def __init__(self, redis_url: str, prefix: str, replica_id: str, url: str, models: list[str],
                 report: Callable[[], dict[str, Any]], interval_s: float = 0.1, ttl_s: float = 3.0) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.replica_id = replica_id
        self.url = url
        self.models = models
        self.report = report
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.published = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="load-report")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
        self._task = None

    async def publish_once(self, client: Any) -> None:
        expiry = time.time() + self.ttl_s
        px = max(1, int(self.ttl_s * 1000))
        reg = orjson.dumps({"replica_id": self.replica_id, "url": self.url, "models": self.models})
        p = self.prefix
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(p + keys.load(self.replica_id), orjson.dumps(self.report()), px=px)
            pipe.zadd(p + keys.LOAD_INDEX, {self.replica_id: expiry})
            pipe.set(p + keys.replica(self.replica_id), reg, px=px)
            pipe.zadd(p + keys.REPLICA_INDEX, {self.replica_id: expiry})
            await pipe.execute()
        self.published += 1

    async def deregister(self, client: Any) -> None:
        p = self.prefix
        await client.delete(p + keys.load(self.replica_id), p + keys.replica(self.replica_id))
        await client.zrem(p + keys.LOAD_INDEX, self.replica_id)
        await client.zrem(p + keys.REPLICA_INDEX, self.replica_id)

    async def _run(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.redis_url, socket_timeout=2.0)
        failing = False
        try:
            while True:
                try:
                    await self.publish_once(client)
                    if failing:
                        log.info("load reports reach Redis again")
                    failing = False
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not failing:
                        log.warning("publishing the load report to Redis failed: %s", exc)
                    failing = True
                await asyncio.sleep(self.interval_s)
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(self.deregister(client), 1.0)
            except Exception:
                pass
            raise
        finally:
            await client.aclose()
