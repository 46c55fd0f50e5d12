"""The gateway's prefix index: which replica holds which chained prefix hashes (DESIGN.md section 2).

One structure serves both modes: approximate mode inserts the character-chunk hashes of what it routed
(``prefix_index_approx``); precise mode inserts and removes the 64-bit block ids that replicas report in their KV
events (``prefix_index_precise``). Because hashes are chained, a hash identifies the whole prefix up to it, so a
replica's match for a request is the number of leading hashes it holds.

Invariants:
- ``holders[h]`` is exactly the set of replicas whose LRU contains ``h`` (kept in step on insert, remove, eviction);
- each replica's LRU holds at most its capacity, so memory is bounded by the sum of capacities (``set_capacity``
  lets the policy follow a replica's reported KV size; ``default_capacity`` otherwise);
- LRU order: an insert (re)marks a hash most recently used; eviction drops the least recently used first.

Matching costs a walk over the prefix many replicas share plus a binary search per replica still matching
(``match``), independent of the number of replicas that match nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence


class PrefixIndex:
    """Per-replica LRUs of chained block/chunk hashes plus an inverted index from hash to holders."""

    def __init__(self, default_capacity: int = 65536, prefix_closed: bool = True) -> None:
        if default_capacity < 1:
            raise ValueError("capacity must be at least one chunk")
        self.default_capacity = default_capacity
        # True when only this class's inserts and LRU evictions change the index: chains then stay prefix closed
        # (see ``match``). Precise mode removes what replicas report, which may be a middle block: walk instead.
        self.prefix_closed = prefix_closed
        self.holders: dict[int, set[str]] = {}
        self.lru: dict[str, OrderedDict[int, None]] = {}
        self.capacity: dict[str, int] = {}
        self.evictions = 0

    def __len__(self) -> int:
        """Entries held over all replicas (the memory bound applies to this)."""
        return sum(len(lru) for lru in self.lru.values())

    def set_capacity(self, replica: str, chunks: int) -> None:
        self.capacity[replica] = max(1, int(chunks))
        self._evict(replica)

    def insert(self, replica: str, hashes: Sequence[int]) -> int:
        """Record that ``hashes`` (a chain, in order) are now cached on ``replica``; returns how many were new.

        The chain is touched tail first, so its head ends up most recently used: eviction then trims prefixes from
        their ends (like a replica's block pool does) instead of cutting a shared head that every match needs.
        """
        lru = self.lru.get(replica)
        if lru is None:
            lru = self.lru[replica] = OrderedDict()
        new = 0
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            new += 1
            holders = self.holders.get(h)
            if holders is None:
                self.holders[h] = {replica}
            else:
                holders.add(replica)
        self._evict(replica)
        return new

    def _evict(self, replica: str) -> None:
        lru = self.lru.get(replica)
        if lru is None:
            return
        cap = self.capacity.get(replica, self.default_capacity)
        while len(lru) > cap:
            h, _ = lru.popitem(last=False)
            self.evictions += 1
            self._drop_holder(h, replica)

    def remove(self, replica: str, hashes: Iterable[int]) -> int:
        """Forget ``hashes`` on ``replica`` (a precise-mode BlockRemoved); returns how many were held."""
        lru = self.lru.get(replica)
        if lru is None:
            return 0
        gone = 0
        for h in hashes:
            if lru.pop(h, 0) is None:  # stored values are None; the 0 default marks "was absent"
                gone += 1
                self._drop_holder(h, replica)
        return gone

    def _drop_holder(self, h: int, replica: str) -> None:
        holders = self.holders.get(h)
        if holders is not None:
            holders.discard(replica)
            if not holders:
                del self.holders[h]

    def clear(self, replica: str) -> None:
        """Forget everything ``replica`` holds, keeping its capacity (a resync or AllBlocksCleared)."""
        for h in self.lru.pop(replica, ()):
            self._drop_holder(h, replica)

    def remove_replica(self, replica: str) -> None:
        self.clear(replica)
        self.capacity.pop(replica, None)

    def match(self, hashes: Sequence[int], candidates: Iterable[str] | None = None) -> dict[str, int]:
        """Matched prefix length in hashes per replica holding at least the first one (others are absent).

        Walks the chain while many replicas still match (a shared system prompt), then, when ``prefix_closed``,
        finds each remaining replica's extent by binary search: a replica holding hash ``i`` of a chain then holds
        every earlier one, because an insert touches the whole chain up to its end (tail first, so earlier hashes are
        always at least as recent) and eviction drops the least recent first. A long conversation thus costs
        O(log n) lookups instead of n. Without prefix closure the walk continues to the end of the match.
        """
        out: dict[str, int] = {}
        if not hashes:
            return out
        first = self.holders.get(hashes[0])
        if not first:
            return out
        alive = set(first) if candidates is None else first.intersection(candidates)
        i = 1
        n = len(hashes)
        holders_of = self.holders.get
        walk_limit = 2 if self.prefix_closed else 0
        while len(alive) > walk_limit and i < n:
            holders = holders_of(hashes[i])
            if holders is None:
                break
            if not alive <= holders:
                for r in alive - holders:
                    out[r] = i
                alive &= holders
            i += 1
        if not self.prefix_closed:
            for r in alive:
                out[r] = i
            return out
        for r in alive:
            lo, hi = i, n  # r holds hashes[:lo]; find the first index it does not hold
            while lo < hi:
                mid = (lo + hi) // 2
                if r in holders_of(hashes[mid], ()):
                    lo = mid + 1
                else:
                    hi = mid
            out[r] = lo
        return out
