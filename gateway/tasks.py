"""Stopping background tasks reliably.

A library awaited inside a task (redis-py on a dying connection, for one) may swallow a cancellation; then one
``cancel()`` leaves the task running forever and shutdown hangs. ``stop_task`` cancels until the task is done.
"""

from __future__ import annotations

import asyncio
import contextlib


async def stop_task(task: asyncio.Task | None, attempts: int = 20, wait: float = 0.25) -> None:
    if task is None:
        return
    for _ in range(attempts):
        if task.done():
            break
        task.cancel()
        await asyncio.wait([task], timeout=wait)
    if task.done():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()
