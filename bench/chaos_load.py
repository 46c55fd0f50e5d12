"""Load for the chaos scenarios: streaming chat requests, closed- or open-loop, and what each one saw.

A request counts as ``ok`` only if the client got status 200, a stream ending with ``data: [DONE]`` and no error
event, and usage whose ``completion_tokens`` equals the forced output length (``X-Sim-Output-Tokens``): a
continued stream must be indistinguishable from an unbroken one. ``rejected`` = 429/503 with ``Retry-After``.
TTFT is the time to the first chunk carrying text (the assistant-role chunk comes before any token).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import aiohttp
import orjson

WORDS = ("route", "cache", "prefix", "token", "replica", "gateway", "stream", "batch", "queue", "decode")


@dataclass
class Sent:
    start: float
    gateway: str = ""
    status: int = 0
    replica: str = ""
    first_byte: float | None = None
    first_token: float | None = None
    end: float | None = None
    done: bool = False
    error_event: bool = False
    ids: set[str] = field(default_factory=set)
    usage: dict | None = None
    expected_tokens: int = 0
    retry_after: str | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return (self.status == 200 and self.done and not self.error_event and len(self.ids) <= 1
                and isinstance(self.usage, dict) and self.usage.get("completion_tokens") == self.expected_tokens)

    @property
    def rejected(self) -> bool:
        return self.status in (429, 503) and self.retry_after is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ids"] = sorted(self.ids)
        return d


def prompt(rng: random.Random, words: int = 40) -> str:
    """A prompt with its own first words (no shared prefix: routing by cache affinity stays out of the way)."""
    return f"Request {rng.randrange(10**9)}: " + " ".join(rng.choice(WORDS) for _ in range(words))


async def stream_chat(session: aiohttp.ClientSession, gateway: str, tokens: int, text: str,
                      timeout: float = 120.0, model: str = "foresight-tiny") -> Sent:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": tokens}
    s = Sent(time.monotonic(), gateway, expected_tokens=tokens)
    try:
        async with session.post(gateway + "/v1/chat/completions", data=orjson.dumps(body),
                                headers={"Content-Type": "application/json", "X-Sim-Output-Tokens": str(tokens)},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            s.status, s.replica = r.status, r.headers.get("X-Foresight-Replica", "")
            s.retry_after = r.headers.get("Retry-After")
            if r.status != 200:
                await r.read()
                return s
            buf = b""
            async for chunk in r.content.iter_any():
                if s.first_byte is None:
                    s.first_byte = time.monotonic()
                buf += chunk
                *events, buf = buf.split(b"\n\n")
                for event in events:
                    _event(s, event)
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        s.error = f"{type(e).__name__}: {e}"
    finally:
        s.end = time.monotonic()
    return s


def _event(s: Sent, event: bytes) -> None:
    payload = event.removeprefix(b"data: ").strip()
    if payload == b"[DONE]":
        s.done = True
        return
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        s.error = "bad event"
        return
    if "error" in obj:
        s.error_event = True
        s.error = str(obj["error"].get("message"))[:200]
        return
    if obj.get("id"):
        s.ids.add(obj["id"])
    if obj.get("usage"):
        s.usage = obj["usage"]
    for c in obj.get("choices") or ():
        if (c.get("delta") or {}).get("content") and s.first_token is None:
            s.first_token = time.monotonic()


async def closed_loop(workers: int, until: Callable[[], bool], send: Callable[[int], object]) -> list[Sent]:
    """``workers`` clients, each sending its next request when the previous one ended, until ``until()``."""
    out: list[Sent] = []

    async def worker(w: int) -> None:
        while not until():
            out.append(await send(w))  # type: ignore[misc]

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return out


async def open_loop(rate: float, duration: float, send: Callable[[int], object], seed: int = 0) -> list[Sent]:
    """Poisson arrivals at ``rate`` per second for ``duration`` seconds, whatever is pending."""
    rng = random.Random(seed)
    tasks = []
    t0 = time.monotonic()
    t, i = 0.0, 0
    while True:
        t += rng.expovariate(rate)
        if t > duration:
            break
        delay = t0 + t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))  # type: ignore[arg-type]
        i += 1
    return list(await asyncio.gather(*tasks))


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q / 100 * (len(v) - 1)))))]


def summary(sent: Sequence[Sent]) -> dict:
    ttfts = [s.ttft for s in sent if s.ok and s.ttft is not None]
    e2e = [s.end - s.start for s in sent if s.ok and s.end is not None]
    return {"requests": len(sent), "ok": sum(s.ok for s in sent), "rejected": sum(s.rejected for s in sent),
            "failed": sum(not s.ok and not s.rejected for s in sent),
            "ttft_p50_s": pct(ttfts, 50), "ttft_p99_s": pct(ttfts, 99), "e2e_p50_s": pct(e2e, 50),
            "e2e_p99_s": pct(e2e, 99)}


def failures(sent: Sequence[Sent], limit: int = 10) -> list[dict]:
    return [s.as_dict() for s in sent if not s.ok and not s.rejected][:limit]
