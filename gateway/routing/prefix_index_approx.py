"""Approximate-mode keys (DESIGN.md section 2): chained hashes of fixed-size character chunks of the prompt.

Without a tokenizer or KV events, the gateway hashes fixed-size character chunks of the rendered prompt as an
xxhash64 chain (each chunk's hash is seeded by the previous one, the first by the model name, so a chunk hash
identifies the whole text up to it). The policy records, per replica, the chunks it routed there in a
``gateway.routing.prefix_index.PrefixIndex`` (an LRU per replica, bounded), and shares them with peer gateways
through ``gateway.routing.prefix_index_shared``.
"""

from __future__ import annotations

import xxhash


def chunk_hashes(text: str, model: str, chunk_chars: int = 64, limit: int | None = None) -> list[int]:
    """64-bit chained hashes of the full ``chunk_chars`` chunks of ``text`` (at most ``limit`` of them)."""
    n = len(text) // chunk_chars
    if limit is not None:
        n = min(n, limit)
    h = xxhash.xxh64_intdigest(model.encode())
    out = []
    if text.isascii():
        data = text.encode()
        for i in range(n):
            h = xxhash.xxh64_intdigest(data[i * chunk_chars:(i + 1) * chunk_chars], seed=h)
            out.append(h)
    else:
        # Chunk by characters, not bytes, so the chunk size means the same in every language.
        for i in range(n):
            h = xxhash.xxh64_intdigest(text[i * chunk_chars:(i + 1) * chunk_chars].encode("utf-8", "surrogatepass"),
                                       seed=h)
            out.append(h)
    return out
