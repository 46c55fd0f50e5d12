"""Admission: a per-gateway in-flight limit and a bounded FIFO wait queue with a timeout.

``acquire(ready)`` returns at once when a slot is free, no one is waiting and ``ready()`` (per-replica limits:
some eligible replica has room) holds; otherwise the request waits in the queue. A full queue rejects with 429, a
wait longer than ``timeout`` with 503; both carry ``Retry-After``. ``release()`` frees a slot; ``poke()`` re-checks
the waiters when capacity appeared elsewhere (a replica finished a request or became healthy). Waiters are
served in arrival order among those whose ``ready()`` holds, so a request for a busy model does not block one for
an idle model.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from foresight.errors import APIError


class Admission:
    def __init__(self, max_inflight: int = 1024, queue_size: int = 1024, timeout: float = 10.0,
                 retry_after: float = 1.0) -> None:
        self.max_inflight = max_inflight
        self.queue_size = queue_size
        self.timeout = timeout
        self.retry_after = retry_after
        self.inflight = 0
        self._waiters: deque[tuple[asyncio.Future[None], Callable[[], bool]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, ready: Callable[[], bool]) -> None:
        if not self._waiters and self.inflight < self.max_inflight and ready():
            self.inflight += 1
            return
        if len(self._waiters) >= self.queue_size:
            raise APIError(429, "the gateway is at capacity and its queue is full; retry later",
                           code="queue_full", retry_after=self.retry_after)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (fut, ready)
        self._waiters.append(entry)
        self.poke()
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except TimeoutError:
            if fut.done() and not fut.cancelled():  # granted at the last moment: keep the slot
                return
            raise APIError(503, f"no capacity within {self.timeout:g}s; retry later", code="queue_timeout",
                           retry_after=self.retry_after) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, but the client went away: hand the slot on
            raise
        finally:
            try:
                self._waiters.remove(entry)
            except ValueError:
                pass

    def release(self) -> None:
        self.inflight = max(0, self.inflight - 1)
        self.poke()

    def poke(self) -> None:
        """Grant slots to waiters, oldest first, while capacity lasts."""
        if not self._waiters:
            return
        for entry in list(self._waiters):
            if self.inflight >= self.max_inflight:
                return
            fut, ready = entry
            if fut.done():
                continue
            if ready():
                self.inflight += 1
                fut.set_result(None)
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
