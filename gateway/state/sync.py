"""The background link between one gateway and the shared store (DESIGN.md sections 1 and 4).

Every ``interval`` (~100 ms) it publishes this gateway's per-replica in-flight accounting with a TTL, reads every
other gateway's and stores the sum in each replica's ``view.remote`` (with ``push_interval``, peers' counts also
arrive by pub/sub between polls: ``peer_inflight.py``), takes fresh replica load reports, and
(less often) picks up self-registered replicas, API keys and rate-limit consumption. The request path only reads
what this task last wrote. When the store fails, the task logs once, clears the remote view after ``remote_ttl``
(stale numbers from a partitioned store are worse than none) and keeps trying; it catches up when the store returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

from gateway.auth import Auth, parse_store_keys
from gateway.ratelimit import RateLimiter
from gateway.registry import Registry
from gateway.routing.base import InflightCounts
from gateway.state import keys
from gateway.state.base import StateStore, StoreUnavailable
from gateway.state.peer_inflight import PeerInflight, sum_counts
from gateway.tasks import stop_task

log = logging.getLogger(__name__)


class StateSync:
    def __init__(self, store: StateStore, registry: Registry, gateway_id: str, *, interval: float = 0.1,
                 ttl: float = 2.0, slow_every: int = 10, auth: Auth | None = None,
                 limiter: RateLimiter | None = None, on_capacity: Callable[[], None] | None = None,
                 push_interval: float | None = None) -> None:
        self.store = store
        self.registry = registry
        self.gateway_id = gateway_id
        self.interval = interval
        self.ttl = ttl
        self.slow_every = slow_every
        self.auth = auth
        self.limiter = limiter
        self.on_capacity = on_capacity
        self.healthy = True
        self.last_ok = time.monotonic()
        self.remote: dict[str, InflightCounts] = {}
        self._task: asyncio.Task[None] | None = None
        self._tick = 0
        # Between polls, peers' counts also arrive by push (several gateways; see peer_inflight.py).
        self.peers = PeerInflight(store, gateway_id, self._own, self._apply_remote,
                                  interval=push_interval) if push_interval else None

    def _own(self) -> Iterator[tuple[str, InflightCounts]]:
        return ((r.id, r.local) for r in self.registry)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="state-sync")
        if self.peers is not None:
            self.peers.start()

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None
        if self.peers is not None:
            await self.peers.close()

    async def _run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.interval)

    async def step(self) -> None:
        """One sync round; never raises (the store may be down)."""
        try:
            await self._fast()
            if self._tick % self.slow_every == 0:
                await self._slow()
            self._tick += 1
            if not self.healthy:
                log.info("state store %s reachable again; shared state resumes", self.store.name)
            self.healthy = True
            self.last_ok = time.monotonic()
        except StoreUnavailable as e:
            if self.healthy:
                log.warning("state store unavailable (%s); routing on the local view", e)
            self.healthy = False
            if time.monotonic() - self.last_ok > self.ttl:
                if self.peers is not None:
                    self.peers.forget()  # a push arriving before the store answers polls again starts afresh
                self._apply_remote({})

    async def _fast(self) -> None:
        await self.store.put_inflight(self.gateway_id, dict(self._own()), self.ttl)
        everyone = await self.store.get_inflight()
        if self.peers is not None:
            remote = self.peers.merge_polled(everyone)
        else:
            remote = sum_counts(counts for gw, counts in everyone.items() if gw != self.gateway_id)
        self._apply_remote(remote)
        reports = await self.store.get_load_reports()
        if reports:
            self._apply_reports(reports)

    def _apply_remote(self, remote: dict[str, InflightCounts]) -> None:
        self.remote = remote
        for r in self.registry:
            r.view.remote = remote.get(r.id) or InflightCounts()

    def _apply_reports(self, reports: dict[str, dict[str, object]]) -> None:
        by_url = {str(rep.get("url", "")).rstrip("/"): rep for rep in reports.values()}
        for r in self.registry:
            rep = reports.get(r.id) or (reports.get(r.reported_id) if r.reported_id else None) or by_url.get(r.url)
            if rep is None:
                continue
            current = r.view.load
            if current is None or float(rep.get("ts", 0) or 0) >= float(current.get("ts", 0) or 0):  # type: ignore[arg-type]
                r.set_load(rep)  # type: ignore[arg-type]

    async def _slow(self) -> None:
        registered = await self.store.list_replicas()
        listed = set()
        for info in registered:
            replica = self.registry.get(info.replica_id) or self.registry.find(info.url)
            if replica is None:
                log.info("replica %s registered itself at %s", info.replica_id, info.url)
                replica = self.registry.add(info.url, info.replica_id, info.models, source="store")
                if self.on_capacity is not None:
                    self.on_capacity()
            listed.add(replica.id)
        for r in self.registry:
            if r.source == "store" and r.id not in listed:
                log.info("replica %s registration expired; removing it", r.id)
                self.registry.remove(r.id)
        if self.auth is not None:
            self.auth.store_keys = parse_store_keys(await self.store.hash_get_all(keys.API_KEYS))
        if self.limiter is not None:
            await self.limiter.sync(self.store)
