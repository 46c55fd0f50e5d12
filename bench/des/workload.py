"""Token ids and prompt text for simulated requests, derived from trace hash ids (shared blocks stay shared).

Each 512-token trace block id maps to 512 deterministic token ids below 256 (small ints: cheap to hold for
thousands of live requests; 16-token blocks of random bytes never collide in practice). The prompt text the
gateway sees has one printable character per token, so character chunks and token blocks share the same
structure; the gateway learns the characters-per-token ratio from completions as it does in production.
"""

from __future__ import annotations

import random
from functools import lru_cache

from bench.traces import MOONCAKE_BLOCK_TOKENS, TraceRequest

_UNIQUE = 1 << 48


@lru_cache(maxsize=16384)
def block_tokens(block_id: int) -> tuple[int, ...]:
    return tuple(random.Random(block_id * 7919 + 17).randbytes(MOONCAKE_BLOCK_TOKENS))


def prompt_tokens(req: TraceRequest) -> list[int]:
    ids = req.hash_ids or tuple(_UNIQUE + req.index * 4096 + i
                                for i in range(-(-req.input_length // MOONCAKE_BLOCK_TOKENS)))
    out: list[int] = []
    for h in ids:
        out.extend(block_tokens(h))
        if len(out) >= req.input_length:
            break
    if len(out) < req.input_length:  # more tokens than ids cover: unique filler
        filler = random.Random(_UNIQUE + req.index).randbytes(req.input_length - len(out))
        out.extend(filler)
    return out[: req.input_length]


_CHARS = [chr(33 + (t % 94)) for t in range(256)]


def prompt_text(tokens: list[int]) -> str:
    return "".join([_CHARS[t] for t in tokens])
