"""Following one pub/sub channel of the state store for as long as a task runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.state.base import StateStore, StoreUnavailable

log = logging.getLogger(__name__)


async def follow(store: StateStore, channel: str, apply: Callable[[bytes], object], *, backoff: float = 0.1,
                 subscribed: asyncio.Event | None = None, what: str = "") -> None:
    """Hand every message of ``channel`` to ``apply``, forever. When the store fails, subscribe again after
    ``backoff`` seconds, doubling up to 2 s while it stays down. ``subscribed`` (if given) is set while a
    subscription is live. Never returns; cancel the task to stop."""
    delay = backoff
    while True:
        try:
            sub = await store.subscribe(channel)
            if subscribed is not None:
                subscribed.set()
            delay = backoff
            try:
                async for message in sub:
                    apply(message)
            finally:
                await sub.close()
        except StoreUnavailable as e:
            log.debug("%s: subscription to %s lost (%s)", what or "pub/sub", channel, e)
        if subscribed is not None:
            subscribed.clear()
        await asyncio.sleep(delay)
        delay = min(2.0, delay * 2)
