"""KV cache events (vLLM's schema, 64-bit block ids) and their publication (DESIGN.md section 2).

The block pool appends ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared`` as blocks gain or lose
cached content. After every step the engine drains them into a ``KVEventBatch`` numbered by ``seq``
(1, 2, ... within one ``epoch``; a replica restart starts a new epoch with ``AllBlocksCleared``), so a
consumer detects a gap or a restart and re-reads the ``/kv/blocks`` snapshot, which carries the ``seq`` it
is consistent with.

With Redis, batches go to the stream ``{prefix}kv:events:{replica_id}`` (XADD, approximate MAXLEN), one entry
per batch with fields ``epoch``, ``seq`` and ``data`` (the batch as JSON). Publishing happens in a background
task: nothing on the request path waits for Redis; batches pile up in a bounded buffer while Redis is down
and the oldest are dropped (consumers then see a seq gap).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

log = logging.getLogger(__name__)


@dataclass
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    type: str = "BlockStored"


@dataclass
class BlockRemoved:
    block_hashes: list[int]
    type: str = "BlockRemoved"


@dataclass
class AllBlocksCleared:
    type: str = "AllBlocksCleared"


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass
class KVEventBatch:
    epoch: str
    seq: int
    ts: float
    replica_id: str
    events: list[KVEvent] = field(default_factory=list)

    def to_json(self) -> bytes:
        return orjson.dumps({"epoch": self.epoch, "seq": self.seq, "ts": self.ts, "replica_id": self.replica_id,
                             "events": [asdict(e) for e in self.events]})


def stream_key(prefix: str, replica_id: str) -> str:
    return f"{prefix}kv:events:{replica_id}"


class KVEventPublisher:
    """Numbers event batches and (optionally) ships them to a Redis stream in the background."""

    def __init__(self, replica_id: str, redis_url: str | None = None, key_prefix: str = "foresight:",
                 maxlen: int = 100_000, buffer: int = 10_000) -> None:
        self.replica_id = replica_id
        self.epoch = uuid.uuid4().hex[:16]
        self.seq = 0
        self.published = 0
        self.dropped = 0
        self._key = stream_key(key_prefix, replica_id)
        self._maxlen = maxlen
        self._redis_url = redis_url
        self._pending: deque[KVEventBatch] = deque(maxlen=buffer)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def emit(self, events: list[KVEvent]) -> KVEventBatch | None:
        """Number one step's events; returns the batch (None when there were none)."""
        if not events:
            return None
        self.seq += 1
        batch = KVEventBatch(self.epoch, self.seq, time.time(), self.replica_id, events)
        if self._redis_url:
            if len(self._pending) == self._pending.maxlen:
                self.dropped += 1
            self._pending.append(batch)
            self._wake.set()
        return batch

    async def start(self) -> None:
        if self._redis_url and self._task is None:
            self._task = asyncio.create_task(self._run(), name="kv-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _run(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self._redis_url)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    batch = list(self._pending)
                    try:
                        pipe = client.pipeline(transaction=False)
                        for b in batch:
                            pipe.xadd(self._key, {"epoch": b.epoch, "seq": b.seq, "data": b.to_json()},
                                      maxlen=self._maxlen, approximate=True)
                        await pipe.execute()
                    except Exception as exc:  # Redis down: keep the buffer, retry soon
                        log.warning("publishing KV events to Redis failed: %s", exc)
                        await asyncio.sleep(0.5)
                        break
                    last = batch[-1].seq  # the deque may have dropped its oldest meanwhile: pop by seq
                    while self._pending and self._pending[0].seq <= last:
                        self._pending.popleft()
                    self.published += len(batch)
        finally:
            await client.aclose()

    def describe(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seq": self.seq, "stream": self._key if self._redis_url else None}
