"""Feeding the precise prefix index from the replicas' KV events (DESIGN.md section 2).

Replicas append numbered event batches to the Redis stream ``{prefix}kv:events:{replica_id}`` (fields ``epoch``,
``seq``, ``data``: the batch JSON; see ``replicas.engine.kv_events``) and serve ``GET /kv/blocks``, a snapshot of
their cached block ids with the ``epoch``/``seq`` it is consistent with. This consumer, in the background:

- learns the replicas to follow from what routing sees (``watch``: the load report's ``replica_id`` names the
  stream; the gateway's replica id names the index entry);
- reads every followed stream with one blocking ``XREAD`` and hands batches to ``PreciseIndex.apply_batch``;
- when a replica needs a resync (first sight, a seq gap, a new epoch), fetches ``/kv/blocks`` and loads it; batches
  that arrive meanwhile are buffered by the index and replayed past the snapshot's seq.

Without Redis (a ``MemoryStore``) there are no event streams: the consumer then polls ``/kv/blocks`` every
``snapshot_interval`` seconds, which is still exact up to that staleness. Nothing on a request's path waits on
any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import aiohttp
import orjson

from gateway.routing.base import PolicyContext, ReplicaView
from gateway.routing.prefix_index_precise import PreciseIndex

log = logging.getLogger(__name__)


def parse_snapshot(data: dict) -> tuple[list[int], int | None, str | None]:
    ids = data.get("block_ids", data.get("blocks", data.get("block_hashes", [])))
    seq = data.get("seq")
    return [int(h) for h in ids], (int(seq) if seq is not None else None), data.get("epoch")


class KVEventsConsumer:
    def __init__(self, ctx: PolicyContext, capacity: int = 1 << 20, snapshot_interval: float = 1.0) -> None:
        self.index = PreciseIndex(capacity)
        self.client = getattr(ctx.store, "client", None)  # a RedisStore's redis.asyncio client, if any
        self.key_prefix = ctx.key_prefix
        self.snapshot_interval = snapshot_interval
        self.urls: dict[str, str] = {}  # gateway replica id -> base URL
        self.streams: dict[str, str] = {}  # stream key -> gateway replica id
        self.cursor: dict[str, str] = {}
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None
        self._changed = asyncio.Event()

    def watch(self, replicas: Sequence[ReplicaView]) -> None:
        """Follow these replicas (cheap when nothing is new; called from ``rank``)."""
        for r in replicas:
            if r.id in self.urls:
                continue
            self.urls[r.id] = r.url
            stream_id = str((r.load or {}).get("replica_id") or r.id)
            key = f"{self.key_prefix}kv:events:{stream_id}"
            self.streams[key] = r.id
            self.cursor[key] = "$"
            self._changed.set()

    async def resync(self, replica: str) -> bool:
        """Load ``replica``'s snapshot; False (and still stale) when it cannot be fetched."""
        url = self.urls.get(replica)
        if url is None or self._session is None:
            return False
        self.index.begin_resync(replica)
        try:
            async with self._session.get(url + "/kv/blocks", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                resp.raise_for_status()
                ids, seq, epoch = parse_snapshot(orjson.loads(await resp.read()))
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.debug("kv snapshot of %s failed: %s", replica, e)
            self.index.abort_resync(replica)
            return False
        self.index.load_snapshot(replica, ids, seq, epoch)
        return True

    async def _resyncer(self) -> None:
        while True:
            for replica in list(self.urls):
                if self.client is None or self.index.needs_resync(replica):
                    await self.resync(replica)
            await asyncio.sleep(self.snapshot_interval if self.client is None else 0.05)

    async def _reader(self) -> None:
        while True:
            if not self.streams:
                await self._changed.wait()
                self._changed.clear()
                continue
            try:
                reply = await self.client.xread(dict(self.cursor), block=100, count=512)
            except Exception as e:  # noqa: BLE001 - Redis slow, down or reconnecting: back off and retry
                # The cursor survives, so a failed read loses nothing; events trimmed meanwhile show as a seq gap.
                log.debug("kv events read failed: %s", e)
                await asyncio.sleep(0.2)
                continue
            for key, entries in reply or ():
                key = key.decode() if isinstance(key, bytes) else key
                replica = self.streams.get(key)
                for entry_id, fields in entries:
                    self.cursor[key] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    if replica is None:
                        continue
                    try:
                        batch = orjson.loads(fields[b"data"])
                        self.index.apply_batch(replica, int(batch["seq"]), batch["events"], batch.get("epoch"))
                    except (KeyError, ValueError, TypeError) as e:
                        log.warning("kv events: malformed batch from %s: %s", replica, e)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._tasks.append(asyncio.create_task(self._resyncer(), name="kv-resync"))
        if self.client is not None:
            self._tasks.append(asyncio.create_task(self._reader(), name="kv-events"))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        if self._session is not None:
            await self._session.close()
