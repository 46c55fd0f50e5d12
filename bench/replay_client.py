"""The open-loop sender of ``foresight bench replay``: every request leaves at its arrival time, whatever is pending.

Requests stream (``stream: true`` with usage) so that time to first token is measured where the client sees it.
The forced output length travels in ``X-Sim-Output-Tokens`` (read only by simulated replicas) and as ``max_tokens``
(so a real server stops there too). Rejections (429, 503) and failures (any other non-200, a broken stream, a
timeout) are recorded, never retried: the replay measures what the target does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson

REJECT_STATUSES = (429, 503)


@dataclass(slots=True)
class Prepared:
    """One ready-to-send request: its body is built before the clock starts so sending costs no CPU."""

    index: int
    arrival_s: float
    path: str
    body: bytes
    headers: dict[str, str]
    input_length: int
    output_length: int


@dataclass(slots=True)
class Result:
    index: int
    arrival_s: float
    input_length: int
    output_length: int
    status: str = "failed"  # "ok" | "rejected" | "failed"
    http_status: int = 0
    ttft: float | None = None
    e2e: float | None = None
    tpot: float | None = None
    output_tokens: int = 0
    start_lag: float = 0.0  # how late the sender was versus the schedule (client health check)
    error: str = ""
    route: str = field(default="")


def _chunk_text(chunk: dict) -> str:
    out = []
    for choice in chunk.get("choices") or ():
        if "text" in choice and choice["text"]:
            out.append(choice["text"])
        delta = choice.get("delta") or {}
        if delta.get("content"):
            out.append(delta["content"])
    return "".join(out)


async def send_one(session: aiohttp.ClientSession, base: str, p: Prepared, t0: float, timeout: float) -> Result:
    res = Result(p.index, p.arrival_s, p.input_length, p.output_length)
    sent = time.perf_counter()
    res.start_lag = max(0.0, sent - t0 - p.arrival_s)
    content_chunks = 0
    first: float | None = None
    usage_tokens: int | None = None
    try:
        async with session.post(base + p.path, data=p.body, headers=p.headers,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            res.http_status = resp.status
            res.route = resp.headers.get("X-Foresight-Route", "")
            if resp.status != 200:
                res.status = "rejected" if resp.status in REJECT_STATUSES else "failed"
                res.error = (await resp.text())[:200]
                return res
            done = False
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = orjson.loads(data)
                if "error" in chunk:
                    res.error = str(chunk["error"])[:200]
                    return res
                if _chunk_text(chunk):
                    content_chunks += 1
                    if first is None:
                        first = time.perf_counter()
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
            end = time.perf_counter()
            if not done or first is None:
                res.error = "stream ended without [DONE]" if not done else "no token in stream"
                return res
            res.status = "ok"
            res.ttft = first - sent
            res.e2e = end - sent
            res.output_tokens = int(usage_tokens if usage_tokens is not None else content_chunks)
            res.tpot = (end - first) / (res.output_tokens - 1) if res.output_tokens > 1 else 0.0
            return res
    except (TimeoutError, aiohttp.ClientError, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"[:200]
        return res


async def run_open_loop(base: str | Sequence[str], prepared: Sequence[Prepared], timeout: float = 600.0,
                        progress: bool = False) -> tuple[list[Result], float]:
    """Send every request at ``t0 + arrival_s``; returns the results (in index order) and the wall time.

    With several base URLs (several gateways), request ``i`` goes to ``base[i % n]``.
    """
    bases = [base] if isinstance(base, str) else list(base)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    results: list[Result] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        tasks = []
        for p in prepared:
            delay = t0 + p.arrival_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(send_one(session, bases[len(tasks) % len(bases)], p, t0, timeout)))
        if progress:
            print(f"replay: all {len(tasks)} requests sent after {time.perf_counter() - t0:.1f}s", flush=True)
        results = list(await asyncio.gather(*tasks))
        wall = time.perf_counter() - t0
    results.sort(key=lambda r: r.index)
    return results, wall
