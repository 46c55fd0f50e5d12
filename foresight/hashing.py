"""Chained prefix-block hashes, compatible with vLLM's ``sha256_cbor`` scheme (DESIGN.md section 2).

``root = sha256(cbor(seed))``; ``h_i = sha256(cbor([h_{i-1}, [tokens of block i], extra]))`` with canonical
CBOR and ``extra`` None unless a LoRA name or cache salt applies. Only full blocks are hashed. The 64-bit id
that crosses process boundaries is the last 8 bytes of the digest, read big-endian.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import cbor2

DEFAULT_BLOCK_SIZE = 16
DEFAULT_HASH_SEED = "foresight"


def sha256_cbor(obj: Any) -> bytes:
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def root_hash(seed: Any = DEFAULT_HASH_SEED) -> bytes:
    return sha256_cbor(seed)


def block_id(digest: bytes) -> int:
    """The 64-bit id of a block digest: its last 8 bytes, big-endian."""
    return int.from_bytes(digest[-8:], "big")


def chain_hashes(
    tokens: Sequence[int],
    block_size: int = DEFAULT_BLOCK_SIZE,
    seed: Any = DEFAULT_HASH_SEED,
    extra: Any = None,
    parent: bytes | None = None,
    start_block: int = 0,
) -> list[bytes]:
    """Digests of the full blocks of ``tokens`` from ``start_block`` on, chained from ``parent``.

    ``parent`` must be the digest of block ``start_block - 1`` (or None for the root) so that callers can
    extend a request's hash list incrementally as tokens arrive.
    """
    prev = parent if parent is not None else root_hash(seed)
    out: list[bytes] = []
    n_full = len(tokens) // block_size
    for i in range(start_block, n_full):
        prev = sha256_cbor([prev, list(tokens[i * block_size : (i + 1) * block_size]), extra])
        out.append(prev)
    return out


def block_ids(
    tokens: Sequence[int], block_size: int = DEFAULT_BLOCK_SIZE, seed: Any = DEFAULT_HASH_SEED, extra: Any = None
) -> list[int]:
    """64-bit ids of every full block of ``tokens``."""
    return [block_id(d) for d in chain_hashes(tokens, block_size, seed, extra)]


class BlockHashMemo:
    """Block digests by ``(parent digest, block tokens)``, the least recently used dropped past ``capacity``.

    ``chain`` returns exactly what ``chain_hashes`` returns for the same tokens, seed and extra; a block seen
    recently under the same parent (the next turn of a conversation, a shared system prompt, a retry) costs a
    dict lookup instead of a CBOR encoding and a SHA-256 (~0.6 us against ~3 us a block)."""

    def __init__(self, capacity: int, seed: Any = DEFAULT_HASH_SEED, extra: Any = None) -> None:
        self.capacity = capacity
        self.root = root_hash(seed)
        self.extra = extra
        self._digests: OrderedDict[tuple[bytes, tuple[int, ...]], bytes] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._digests)

    def chain(self, tokens: Sequence[int], block_size: int, parent: bytes | None = None,
              start_block: int = 0) -> list[bytes]:
        """Digests of the full blocks of ``tokens`` from ``start_block`` on, chained from ``parent`` (the digest
        of block ``start_block - 1``; None for the root), as ``chain_hashes``."""
        memo = self._digests
        prev = parent if parent is not None else self.root
        out: list[bytes] = []
        for i in range(start_block, len(tokens) // block_size):
            block = tuple(tokens[i * block_size : (i + 1) * block_size])
            key = (prev, block)
            digest = memo.get(key)
            if digest is None:
                self.misses += 1
                digest = memo[key] = sha256_cbor([prev, block, self.extra])  # a tuple encodes as the list does
                if len(memo) > self.capacity:
                    memo.popitem(last=False)
            else:
                self.hits += 1
                memo.move_to_end(key)
            out.append(digest)
            prev = digest
        return out
