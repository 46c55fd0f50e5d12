"""Workload loaders for trace replay: arrival traces (Mooncake JSONL, Azure CSV) and prompt datasets (AlpacaEval).

A workload is a list of ``TraceRequest`` sorted by ``arrival_s`` (seconds from the start). Loaders read gzipped or
plain files and never modify the data; time scaling (``--speedup``/``--rate``) and windows (``--duration``) are
applied afterwards by ``shape`` so every format gets the same semantics:

- ``speedup``: arrival times divided by X (a 2x speedup doubles the rate, keeping the trace's burst shape);
- ``rate``: arrival times scaled so that the mean rate over the kept window is R requests/s (same shape);
- ``duration``: only requests arriving in the first S seconds (after scaling) are kept.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import orjson

MOONCAKE_BLOCK_TOKENS = 512  # the block size of Mooncake's hash_ids (FAST'25 release README)


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request to replay. ``hash_ids``: shared-prefix block ids (Mooncake); ``prompt``: real text (content)."""

    index: int
    arrival_s: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...] | None = None
    prompt: str | None = None
    tag: str = ""


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 - returned to a with-block by the caller


def _jsonl(path: Path) -> Iterator[dict]:
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)


def load_mooncake(path: Path) -> list[TraceRequest]:
    """Mooncake FAST'25 JSONL: ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids`` (512-token)."""
    out = []
    for i, rec in enumerate(_jsonl(path)):
        out.append(TraceRequest(i, rec["timestamp"] / 1000.0, int(rec["input_length"]), int(rec["output_length"]),
                                tuple(int(h) for h in rec.get("hash_ids") or ()) or None))
    out.sort(key=lambda r: (r.arrival_s, r.index))
    return out


def _azure_time(text: str) -> float:
    # Seven fractional digits: fromisoformat accepts at most six.
    head, _, frac = text.strip().partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}").timestamp()


def load_azure(path: Path) -> list[TraceRequest]:
    """Azure LLM inference trace CSV (``TIMESTAMP, ContextTokens, GeneratedTokens``); lengths only, no prefixes."""
    with _open_text(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return []
    times = [_azure_time(r["TIMESTAMP"]) for r in rows]
    t0 = min(times)
    out = [TraceRequest(i, t - t0, max(1, int(r["ContextTokens"])), max(1, int(r["GeneratedTokens"])))
           for i, (t, r) in enumerate(zip(times, rows, strict=True))]
    out.sort(key=lambda r: (r.arrival_s, r.index))
    return out


def load_trace(path: str | Path) -> list[TraceRequest]:
    """Dispatch on the file name: ``*.jsonl[.gz]`` is Mooncake, ``*.csv[.gz]`` is Azure."""
    p = Path(path)
    name = p.name.removesuffix(".gz")
    if name.endswith(".jsonl") or name.endswith(".json"):
        return load_mooncake(p)
    if name.endswith(".csv"):
        return load_azure(p)
    raise ValueError(f"unknown trace format for {p.name}: expected Mooncake .jsonl or Azure .csv (optionally .gz)")


@dataclass(frozen=True, slots=True)
class ContentItem:
    """A real prompt and the length of a real response to it (in tokens of the replay tokenizer)."""

    prompt: str
    response: str
    tag: str = ""


def load_content(path: str | Path) -> list[ContentItem]:
    """AlpacaEval-style JSONL: ``instruction`` and ``output`` (the real response), ``generator`` kept as the tag."""
    out = []
    for rec in _jsonl(Path(path)):
        if isinstance(rec.get("instruction"), str) and isinstance(rec.get("output"), str):
            out.append(ContentItem(rec["instruction"], rec["output"], str(rec.get("generator", ""))))
    if not out:
        raise ValueError(f"{path}: no records with 'instruction' and 'output'")
    return out


def spread_ties(reqs: Sequence[TraceRequest], seed: int = 0) -> list[TraceRequest]:
    """Spread requests that share a timestamp uniformly over the interval to the next distinct timestamp.

    Mooncake's timestamps come in steps of about 3 s, so a group sharing one timestamp arrived somewhere inside that
    step; replaying them in the same millisecond is an artefact of the trace's resolution that no deployment sees
    (it hurts every multi-gateway setup, whose gateways sync every ~100 ms). Order within a group is kept.
    """
    out: list[TraceRequest] = []
    rng = random.Random(seed)
    i = 0
    n = len(reqs)
    while i < n:
        j = i
        while j < n and reqs[j].arrival_s == reqs[i].arrival_s:
            j += 1
        t0 = reqs[i].arrival_s
        t1 = reqs[j].arrival_s if j < n else t0 + (t0 - out[0].arrival_s) / max(1, len(out)) * (j - i)
        offsets = sorted(rng.uniform(0.0, t1 - t0) for _ in range(j - i))
        out.extend(replace(r, arrival_s=t0 + off) for r, off in zip(reqs[i:j], offsets, strict=True))
        i = j
    return out


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def with_content(arrivals: Sequence[float], items: Sequence[ContentItem], count_tokens, seed: int = 0,
                 ) -> list[TraceRequest]:
    """Real prompts on the given arrival times, drawn in a seeded shuffled order (cycled if the trace is longer).

    ``count_tokens(text) -> int`` measures prompts and responses in the replay tokenizer, so the forced output
    length is the real response's length.
    """
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    out = []
    for i, t in enumerate(arrivals):
        item = items[order[i % len(order)]]
        out.append(TraceRequest(i, t, max(1, count_tokens(item.prompt)), max(1, count_tokens(item.response)),
                                prompt=item.prompt, tag=item.tag))
    return out


def shape(reqs: Sequence[TraceRequest], *, speedup: float | None = None, rate: float | None = None,
          duration: float | None = None, start: float = 0.0, max_requests: int | None = None,
          ) -> list[TraceRequest]:
    """Window and rescale a workload (see the module docstring); arrivals start at 0 afterwards."""
    if speedup is not None and rate is not None:
        raise ValueError("give either speedup or rate, not both")
    if speedup is not None and speedup <= 0 or rate is not None and rate <= 0:
        raise ValueError("speedup and rate must be positive")
    kept = [r for r in reqs if r.arrival_s >= start]
    if not kept:
        return []
    t0 = kept[0].arrival_s
    factor = 1.0 / speedup if speedup else 1.0
    if rate:
        # Choose the factor so that the kept window's mean rate is `rate`, then cut it to the duration.
        span = kept[-1].arrival_s - t0
        if duration is not None:
            # Keep the requests whose scaled arrivals fit the window at the target rate: n/rate seconds of them.
            n = max(1, int(round(rate * duration)))
            kept = kept[:n]
            span = kept[-1].arrival_s - t0
        factor = (len(kept) / rate) / span if span > 0 else 1.0
    out = [replace(r, arrival_s=(r.arrival_s - t0) * factor) for r in kept]
    if duration is not None:
        out = [r for r in out if r.arrival_s <= duration]
    if max_requests is not None:
        out = out[:max_requests]
    return out


def prefix_ceiling(reqs: Sequence[TraceRequest]) -> float:
    """Ideal block hit rate with an infinite cache: fraction of blocks whose id was seen in an earlier request.

    Counts contiguous prefix hits only (a block hits when it and every block before it were seen), like a prefix
    cache. 0 for workloads without hash ids.
    """
    seen: set[int] = set()
    hits = total = 0
    for r in reqs:
        ids = r.hash_ids or ()
        total += len(ids)
        for h in ids:
            if h not in seen:
                break
            hits += 1
        seen.update(ids)
    return hits / total if total else 0.0


def lru_bound(reqs: Sequence[TraceRequest], capacity_tokens: int, block_tokens: int = MOONCAKE_BLOCK_TOKENS,
              ) -> float:
    """Block hit rate of one ideal LRU holding ``capacity_tokens`` (e.g. a whole fleet's KV, perfectly partitioned).

    An upper bound for any router over replicas whose caches add up to that capacity: no prefix is ever held
    twice and eviction is exact LRU over whole-trace blocks (each request touches its blocks head last, so a
    shared head outlives its tails).
    """
    from collections import OrderedDict

    cap = max(1, capacity_tokens // block_tokens)
    lru: OrderedDict[int, None] = OrderedDict()
    hits = total = 0
    for r in reqs:
        ids = r.hash_ids or ()
        total += len(ids)
        for h in ids:
            if h not in lru:
                break
            hits += 1
        for h in reversed(ids):
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > cap:
            lru.popitem(last=False)
    return hits / total if total else 0.0
