"""Other gateways' in-flight counts between two state syncs, pushed through the store's pub/sub.

``StateSync`` polls every gateway's published counts every ~100 ms (DESIGN.md section 4). That is too slow for
several gateways sharing a fleet: a request one gateway sends is invisible to the others for up to a sync interval,
and in the 4-gateway simulation of the Mooncake trace they piled long prompts onto the same replica (p90 TTFT +10
to +20% over one gateway; with the counts 20 ms old it was within 5%). So each gateway also publishes its own
counts on a channel when they change (checked every ``interval``, 10 ms), and applies the others' as they arrive.

Contract: a message carries the sender's whole view (replicas where it has work in flight; the others are zero), so
a lost message is repaired by the next one or by the polled sync. A pushed view is preferred to the polled one
while it is younger than ``fresh_for``; a gateway whose polled entry expired is forgotten. Nothing here is on the
request path; a store failure only delays the push (the polled sync reports the outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import orjson

from gateway.routing.base import InflightCounts
from gateway.state.base import StateStore, StoreUnavailable
from gateway.state.pubsub import follow
from gateway.tasks import stop_task

log = logging.getLogger(__name__)

CHANNEL = "inflight:push"
Counts = dict[str, InflightCounts]


def sum_counts(per_gateway: Iterable[Counts]) -> Counts:
    """Per replica, the sum of several gateways' counts."""
    total: Counts = {}
    for counts in per_gateway:
        for rid, c in counts.items():
            total.setdefault(rid, InflightCounts()).add(c)
    return total


class PeerInflight:
    def __init__(self, store: StateStore, gateway_id: str, own: Callable[[], Iterable[tuple[str, InflightCounts]]],
                 on_change: Callable[[Counts], None], *, interval: float = 0.01, fresh_for: float = 0.25) -> None:
        self.store = store
        self.gateway_id = gateway_id
        self.own = own  # (replica_id, this gateway's counts) for every replica
        self.on_change = on_change  # receives the summed remote counts after a pushed view arrives
        self.interval = interval
        self.fresh_for = fresh_for
        self.views: dict[str, tuple[float, Counts]] = {}  # gateway -> (monotonic time received, its counts)
        self.pushed: set[str] = set()  # gateways whose view in ``views`` came by push
        self.published = self.received = 0
        self.alone = False  # the last poll listed no other gateway: nobody to push to
        self._tasks: list[asyncio.Task] = []

    # -- the sender ---------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, tuple[int, float, float]]:
        return {rid: (c.requests, c.prefill_tokens, c.decode_tokens) for rid, c in self.own()
                if c.requests or c.prefill_tokens or c.decode_tokens}

    async def _publisher(self) -> None:
        last: dict[str, tuple[int, float, float]] | None = None
        while True:
            await asyncio.sleep(self.interval)
            if self.alone:
                last = None  # push the whole view as soon as a peer appears
                continue
            snap = self.snapshot()
            if snap == last:
                continue
            try:
                await self.store.publish(CHANNEL, orjson.dumps({"gw": self.gateway_id, "c": snap}))
                last = snap
                self.published += 1
            except StoreUnavailable as e:
                log.debug("in-flight push failed (%s)", e)
                await asyncio.sleep(1.0)

    # -- the receiver -------------------------------------------------------------------------------------
    def apply(self, message: bytes) -> bool:
        """Take one peer's pushed view; False for this gateway's own or a malformed message."""
        try:
            data = orjson.loads(message)
            gw = str(data["gw"])
            if gw == self.gateway_id:
                return False
            counts = {str(rid): InflightCounts(int(c[0]), float(c[1]), float(c[2])) for rid, c in data["c"].items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            log.warning("in-flight push: dropping a malformed message (%s)", e)
            return False
        self.views[gw] = (time.monotonic(), counts)
        self.pushed.add(gw)
        self.received += 1
        self.on_change(self.remote())
        return True

    def merge_polled(self, everyone: dict[str, Counts]) -> Counts:
        """Fold in the polled sync's view of every live gateway (fresher pushed views win); a gateway neither in the
        poll nor heard from within ``fresh_for`` has expired and is dropped. Returns the summed remote counts."""
        now = time.monotonic()
        self.alone = not any(gw != self.gateway_id for gw in everyone)
        # A gateway that just started pushes before its first polled entry exists: keep it while it is fresh.
        views: dict[str, tuple[float, Counts]] = {gw: v for gw, v in self.views.items()
                                                 if gw in self.pushed and now - v[0] < self.fresh_for}
        for gw, counts in everyone.items():
            if gw == self.gateway_id or gw in views:  # in ``views``: a fresh pushed view, which wins
                continue
            views[gw] = (now, counts)
            self.pushed.discard(gw)
        self.views = views
        self.pushed &= views.keys()
        return self.remote()

    def forget(self) -> None:
        """Drop every peer's view (the store was unreachable for longer than the state's TTL)."""
        self.views.clear()
        self.pushed.clear()

    def remote(self) -> Counts:
        return sum_counts(counts for _, counts in self.views.values())

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._publisher(), name="inflight-push"),
                       asyncio.create_task(follow(self.store, CHANNEL, self.apply, what="in-flight push"),
                                           name="inflight-receive")]

    async def close(self) -> None:
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await stop_task(task)
        self._tasks = []
