"""The precise prefix index (DESIGN.md section 2): per-replica block sets fed by the replicas' KV events.

Replicas publish numbered batches of vLLM-schema events (``BlockStored`` / ``BlockRemoved`` with 64-bit block ids,
``AllBlocksCleared``). ``PreciseIndex.apply_batch`` applies a batch when it is the next one expected from that
replica; a gap in the sequence numbers, or a new epoch (the replica restarted and numbers from scratch), marks the
replica as *stale*: its blocks stay matchable (mostly still right) but the owner (``kv_events_consumer``) must
re-read the replica's ``/kv/blocks`` snapshot. Batches that arrive while a snapshot is being fetched are buffered
and the ones newer than the snapshot are replayed on top of it, so no event is lost or applied twice.

Memory is bounded by the underlying ``PrefixIndex`` capacity per replica (a replica's own KV size bounds what it
reports; the cap protects the gateway from a misbehaving one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.routing.prefix_index import PrefixIndex


@dataclass(slots=True)
class ReplicaStream:
    """Where one replica's event stream stands."""

    epoch: str | None = None
    seq: int | None = None  # last applied batch number
    stale: bool = True  # needs a snapshot before its events can be trusted in sequence
    resyncing: bool = False
    buffered: list[tuple[int, list[Mapping[str, Any]]]] = field(default_factory=list)
    gaps: int = 0
    resyncs: int = 0


class PreciseIndex:
    """Block ids per replica from KV events, with gap detection and snapshot resync (see module docstring)."""

    def __init__(self, capacity: int = 1 << 20) -> None:
        self.index = PrefixIndex(default_capacity=capacity, prefix_closed=False)
        self.streams: dict[str, ReplicaStream] = {}

    def stream(self, replica: str) -> ReplicaStream:
        s = self.streams.get(replica)
        if s is None:
            s = self.streams[replica] = ReplicaStream()
        return s

    def _apply_events(self, replica: str, events: Iterable[Mapping[str, Any]]) -> None:
        for ev in events:
            kind = ev.get("type")
            if kind == "BlockStored":
                self.index.insert(replica, [int(h) for h in ev.get("block_hashes", ())])
            elif kind == "BlockRemoved":
                self.index.remove(replica, [int(h) for h in ev.get("block_hashes", ())])
            elif kind == "AllBlocksCleared":
                self.index.clear(replica)

    def apply_batch(self, replica: str, seq: int, events: Sequence[Mapping[str, Any]], epoch: str | None = None,
                    ) -> bool:
        """Apply batch ``seq``; False when the replica needs a snapshot (gap, restart, or never synced)."""
        s = self.stream(replica)
        if epoch is not None and epoch != s.epoch:
            if s.epoch is not None:
                s.gaps += 1
            s.epoch, s.stale, s.seq = epoch, True, None
            s.buffered.clear()
        if s.resyncing or s.stale:
            s.buffered.append((seq, list(events)))
            return False
        if s.seq is not None and seq <= s.seq:
            return True  # a duplicate delivery: already applied
        if s.seq is not None and seq != s.seq + 1:
            s.gaps += 1
            s.stale = True
            s.buffered.append((seq, list(events)))
            return False
        self._apply_events(replica, events)
        s.seq = seq
        return True

    def needs_resync(self, replica: str) -> bool:
        s = self.stream(replica)
        return s.stale and not s.resyncing

    def begin_resync(self, replica: str) -> None:
        """The owner starts fetching the snapshot; batches from now on are buffered."""
        self.stream(replica).resyncing = True

    def abort_resync(self, replica: str) -> None:
        self.stream(replica).resyncing = False

    def load_snapshot(self, replica: str, block_ids: Iterable[int], seq: int | None, epoch: str | None = None) -> None:
        """Replace the replica's blocks with a snapshot taken after batch ``seq``; replay newer buffered batches.

        ``seq`` None means the snapshot carries no sequence number: every buffered batch is replayed on top (an
        insert of a present block or a removal of an absent one is harmless, so replaying is safe).
        """
        s = self.stream(replica)
        if epoch is not None:
            s.epoch = epoch
        self.index.clear(replica)
        self.index.insert(replica, list(block_ids))
        pending = sorted(s.buffered, key=lambda b: b[0])
        s.buffered = []
        s.seq = seq
        for bseq, events in pending:
            if s.seq is not None and bseq <= s.seq:
                continue
            self._apply_events(replica, events)
            s.seq = bseq
        s.stale = s.resyncing = False
        s.resyncs += 1

    def remove_replica(self, replica: str) -> None:
        self.index.remove_replica(replica)
        self.streams.pop(replica, None)

    def match(self, block_ids: Sequence[int], candidates: Iterable[str] | None = None) -> dict[str, int]:
        return self.index.match(block_ids, candidates)
