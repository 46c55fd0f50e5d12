"""Sticky sessions: consistent hashing with bounded load (Mirrokni, Thorup, Zadimoghaddam 2018).

A session id hashes onto a ring of virtual nodes; the session goes to the first replica clockwise that is a
candidate (healthy, serving the model) and whose in-flight count stays within ``(1 + epsilon)`` times the
candidates' average (rounded up). While its replica stays healthy and not overloaded a session keeps going there;
adding or removing one replica moves only about 1/N of the sessions.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import xxhash

from gateway.routing.base import ReplicaView


def _h(text: str) -> int:
    return xxhash.xxh64_intdigest(text.encode())


class StickyRing:
    def __init__(self, vnodes: int = 64, epsilon: float = 0.25) -> None:
        self.vnodes = vnodes
        self.epsilon = epsilon
        self._ids: tuple[str, ...] = ()
        self._points: list[int] = []
        self._owners: list[str] = []

    def _rebuild(self, ids: tuple[str, ...]) -> None:
        ring = sorted((_h(f"{rid}#{v}"), rid) for rid in ids for v in range(self.vnodes))
        self._points = [p for p, _ in ring]
        self._owners = [o for _, o in ring]
        self._ids = ids

    def pick(self, session_id: str, candidates: Sequence[ReplicaView], all_ids: Sequence[str]) -> str | None:
        """The session's replica among ``candidates``; the ring is built over ``all_ids`` (every known replica),
        so a replica's temporary ineligibility does not reshuffle other sessions."""
        if not candidates:
            return None
        ids = tuple(sorted(all_ids))
        if ids != self._ids:
            self._rebuild(ids)
        by_id = {c.id: c for c in candidates}
        total = sum(c.inflight for c in candidates) + 1  # count the request being placed
        bound = math.ceil(total / len(candidates) * (1 + self.epsilon))
        start = bisect.bisect(self._points, _h(session_id))
        seen: set[str] = set()
        n = len(self._points)
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner in seen:
                continue
            seen.add(owner)
            view = by_id.get(owner)
            if view is not None and view.inflight + 1 <= bound:
                return owner
            if len(seen) == len(ids):
                break
        return None
