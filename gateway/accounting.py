"""Request accounting at the gateway (DESIGN.md section 4).

A ``Ticket`` is one dispatch: at creation it adds one request, its expected prefill (uncached prompt tokens) and
its expected decode (predicted p50 output tokens) to the replica's local ``InflightCounts``; ``first_token``
releases the prefill share; ``release`` removes everything left. Every step happens at most once, whatever the
order of calls (an error before the first token releases the prefill in ``release``), so counts never drift.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.routing.base import InflightCounts


class Ticket:
    __slots__ = ("counts", "prefill", "decode", "_prefill_held", "_held", "_on_release")

    def __init__(self, counts: InflightCounts, prefill: float, decode: float,
                 on_release: Callable[[], None] | None = None) -> None:
        self.counts = counts
        self.prefill = prefill
        self.decode = decode
        counts.requests += 1
        counts.prefill_tokens += prefill
        counts.decode_tokens += decode
        self._prefill_held = True
        self._held = True
        self._on_release = on_release

    @property
    def held(self) -> bool:
        return self._held

    def first_token(self) -> None:
        if self._prefill_held:
            self._prefill_held = False
            self.counts.prefill_tokens = max(0.0, self.counts.prefill_tokens - self.prefill)

    def release(self) -> None:
        if not self._held:
            return
        self.first_token()
        self._held = False
        c = self.counts
        c.requests = max(0, c.requests - 1)
        c.decode_tokens = max(0.0, c.decode_tokens - self.decode)
        if c.requests == 0:  # float rounding must not leave phantom work on an idle replica
            c.prefill_tokens = c.decode_tokens = 0.0
        if self._on_release is not None:
            self._on_release()
