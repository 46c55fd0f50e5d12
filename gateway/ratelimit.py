"""Per-key token buckets, shared between gateways through the state store without touching it per request.

Each gateway decides locally (a request never waits for Redis). In the background, ``sync`` adds what this
gateway took since the last sync to a shared per-key counter for the current window (``incr`` returns the total),
works out what the other gateways took, and removes that from the local bucket. So the deployment as a whole
admits about ``rate`` requests per second per key (plus the burst), lagging by one sync interval; when the store is
down each gateway enforces the limit on its own traffic alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from foresight.errors import APIError
from gateway.auth import KeyInfo
from gateway.state import keys
from gateway.state.base import StateStore

WINDOW_S = 10


@dataclass(slots=True)
class Bucket:
    rate: float
    burst: float
    tokens: float
    updated: float
    unsynced: float = 0.0  # taken here since the last sync
    own_in_window: dict[int, float] = field(default_factory=dict)
    others_seen: dict[int, float] = field(default_factory=dict)

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets: dict[str, Bucket] = {}
        self.clock = clock

    def take(self, key: KeyInfo | None) -> None:
        """Take one token for ``key`` or raise 429 with ``Retry-After``; keys without a rate are unlimited."""
        if key is None or not key.rate:
            return
        now = self.clock()
        b = self.buckets.get(key.digest)
        if b is None:
            burst = key.burst or max(1.0, key.rate)
            b = self.buckets[key.digest] = Bucket(key.rate, burst, burst, now)
        b.refill(now)
        if b.tokens < 1.0:
            raise APIError(429, f"rate limit exceeded for key '{key.name}'", code="rate_limit_exceeded",
                           retry_after=(1.0 - b.tokens) / b.rate)
        b.tokens -= 1.0
        b.unsynced += 1.0

    async def sync(self, store: StateStore) -> None:
        """Exchange consumption with the other gateways (raises StoreUnavailable; the caller retries later)."""
        window = int(time.time() // WINDOW_S)
        for d, b in list(self.buckets.items()):
            delta, b.unsynced = b.unsynced, 0.0
            try:
                total = await store.incr(keys.rate_counter(d, window), delta, ttl=WINDOW_S * 3)
            except Exception:
                b.unsynced += delta  # report it next time
                raise
            own = b.own_in_window.get(window, 0.0) + delta
            b.own_in_window = {window: own}
            others = max(0.0, total - own)
            new_others = others - b.others_seen.get(window, 0.0)
            b.others_seen = {window: others}
            if new_others > 0:
                b.refill(self.clock())
                b.tokens = max(-b.burst, b.tokens - new_others)
