"""Reading replicas' Prometheus ``/metrics`` for benchmarks: counter snapshots and the prefix-cache hit rate.

The hit rate over a replay is the ratio of two counter deltas summed over replicas: prompt tokens served from the
prefix cache (``foresight_replica_prefix_hit_tokens_total``) over prompt tokens of admitted requests
(``foresight_replica_prompt_tokens_total``); vLLM-style ``*prefix_cache_hits*``/``*prefix_cache_queries*``
counters are read when ours are absent. A missing counter gives None, never a number read from something else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


def counters(text: str) -> dict[str, float]:
    """Every ``*_total`` sample of a Prometheus text page, summed over label sets."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_total"):
                out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


async def scrape(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(base + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return counters(await resp.text())


async def scrape_all(urls: Sequence[str]) -> dict[str, dict[str, float]]:
    async with aiohttp.ClientSession() as session:
        pages = await asyncio.gather(*(scrape(session, u) for u in urls), return_exceptions=True)
    return {u: p for u, p in zip(urls, pages, strict=True) if isinstance(p, dict)}


HIT_NAMES = ("foresight_replica_prefix_hit_tokens_total", "vllm:prefix_cache_hits_total")
QUERY_NAMES = ("foresight_replica_prompt_tokens_total", "vllm:prefix_cache_queries_total")


def _first(page: Mapping[str, float], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in page), None)


def prefix_hit_rate(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]],
                    ) -> float | None:
    """Cached / admitted prompt tokens over the interval, all replicas together; None without such counters."""
    hits = queries = 0.0
    for url, page in after.items():
        hit_name, query_name = _first(page, HIT_NAMES), _first(page, QUERY_NAMES)
        if hit_name is None or query_name is None:
            continue
        prev = before.get(url, {})
        hits += page[hit_name] - prev.get(hit_name, 0.0)
        queries += page[query_name] - prev.get(query_name, 0.0)
    return hits / queries if queries > 0 else None
