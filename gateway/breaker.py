"""A per-replica circuit breaker: closed -> open (with exponential backoff) -> half-open trial -> closed.

Contract:
- ``closed``: traffic flows; ``failure_threshold`` consecutive failures (or one ``trip``, for a refused
  connection or a failed active probe streak) open it.
- ``open``: no traffic until ``open_until``; each re-opening doubles the backoff (up to ``max_backoff``).
- ``half_open``: after the backoff, exactly one trial (a real request or an active probe) is let through; success
  closes the breaker and resets the backoff, failure re-opens it.
State changes are reported to ``on_change(old, new)`` so the registry can update metrics and policies.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 3, base_backoff: float = 1.0, max_backoff: float = 30.0,
                 on_change: Callable[[str, str], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.failure_threshold = failure_threshold
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.on_change = on_change
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.backoff = base_backoff
        self.open_until = 0.0
        self.trial_taken = False

    def _set(self, new: str) -> None:
        old, self.state = self.state, new
        if old != new and self.on_change is not None:
            self.on_change(old, new)

    def available(self) -> bool:
        """Whether a request may be sent now (does not claim the half-open trial; see ``acquire``)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return self.clock() >= self.open_until
        return not self.trial_taken

    def acquire(self) -> bool:
        """Claim permission for one request; in half-open only the first caller gets it."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.clock() < self.open_until:
                return False
            self._set(HALF_OPEN)
            self.trial_taken = False
        if self.trial_taken:
            return False
        self.trial_taken = True
        return True

    def record_success(self) -> None:
        self.failures = 0
        if self.state != CLOSED:
            self.backoff = self.base_backoff
            self.trial_taken = False
            self._set(CLOSED)

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.failure_threshold):
            self.trip()

    def trip(self) -> None:
        """Open now (or stay open and push the deadline), doubling the backoff after a failed trial."""
        if self.state == HALF_OPEN:
            self.backoff = min(self.max_backoff, self.backoff * 2)
        if self.state != OPEN:
            self.open_until = self.clock() + self.backoff
        self.trial_taken = False
        self._set(OPEN)

    def probe_succeeded(self) -> None:
        """An active probe answered: it counts as the half-open trial once the backoff has elapsed."""
        if self.state == CLOSED:
            return
        if self.clock() >= self.open_until:
            self.record_success()
