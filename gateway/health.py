"""Active health checks: every replica's load report (or ``/health`` for backends without ``/load``), periodically.

A probe that answers feeds the replica's load report to routing and counts as the breaker's half-open trial once
the backoff has elapsed (this is how a restarted replica is re-admitted). A refused connection trips the breaker at
once; other probe failures trip it after ``failure_threshold`` in a row. Passive outlier detection (real traffic)
lives in the proxy, which reports to the same breaker.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import orjson

from gateway.registry import Registry, Replica
from gateway.tasks import stop_task

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(self, registry: Registry, session: aiohttp.ClientSession, interval: float = 0.5,
                 timeout: float = 1.0, failure_threshold: int = 2, load_ttl: float = 3.0,
                 models_every: float = 10.0) -> None:
        self.registry = registry
        self.session = session
        self.interval = interval
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.failure_threshold = failure_threshold
        self.load_ttl = load_ttl
        self.models_every = models_every
        self._models_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health-checker")

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.interval)

    async def probe_all(self) -> None:
        replicas = list(self.registry)
        if replicas:
            await asyncio.gather(*(self.probe(r) for r in replicas), return_exceptions=True)
        now = time.monotonic()
        for r in replicas:
            r.expire_load(self.load_ttl, now)

    async def _get_json(self, url: str) -> tuple[int, object]:
        async with self.session.get(url, timeout=self.timeout) as resp:
            data = await resp.read()
            try:
                return resp.status, orjson.loads(data) if data else None
            except orjson.JSONDecodeError:
                return resp.status, None

    async def probe(self, r: Replica) -> bool:
        try:
            ok = await self._probe(r)
        except aiohttp.ClientConnectorError as e:
            self._failed(r, f"connect: {e.os_error or e}", trip=True)
            return False
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self._failed(r, f"{type(e).__name__}: {e}")
            return False
        if not ok:
            self._failed(r, "unhealthy status")
            return False
        r.probe_failures = 0
        r.last_probe_ok = time.monotonic()
        r.breaker.probe_succeeded()
        return True

    async def _probe(self, r: Replica) -> bool:
        if r.has_load_endpoint is not False:
            status, body = await self._get_json(r.url + "/load")
            if status == 200 and isinstance(body, dict):
                r.has_load_endpoint = True
                r.set_load(body)
                self.registry.models_changed()
            elif status in (404, 405):
                r.has_load_endpoint = False
            else:
                return False
        if r.has_load_endpoint is False:
            status, _ = await self._get_json(r.url + "/health")
            if status != 200:
                return False
        now = time.monotonic()
        if not r.models or now - self._models_at.get(r.id, 0.0) > self.models_every:
            self._models_at[r.id] = now
            await self._refresh_models(r)
        return True

    async def _refresh_models(self, r: Replica) -> None:
        try:
            status, body = await self._get_json(r.url + "/v1/models")
        except (aiohttp.ClientError, TimeoutError, OSError):
            return
        if status == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
            ids = [m.get("id") for m in body["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
            if ids:
                r.models = tuple(dict.fromkeys((*ids, *r.models)))
                self.registry.models_changed()

    def _failed(self, r: Replica, why: str, trip: bool = False) -> None:
        r.probe_failures += 1
        if trip or r.probe_failures >= self.failure_threshold:
            if r.breaker.state == "closed":
                log.warning("replica %s failed its health probe (%s); ejecting", r.id, why)
            r.breaker.trip()
