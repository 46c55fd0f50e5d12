"""The KV block pool with automatic prefix caching (DESIGN.md section 2).

A block holds ``block_size`` tokens of one sequence. A full, computed block gets the chained
``sha256_cbor`` digest of its tokens (``foresight.hashing``) and is registered in the cache under it, so a
later request with the same prefix reuses it. States of a block:

- **used**: ``ref_cnt > 0`` (in some request's block table);
- **cached**: ``ref_cnt == 0`` and it has a digest (reusable, evictable);
- **free**: ``ref_cnt == 0`` and no digest.

Cached and free blocks sit in one LRU queue (a doubly linked list: O(1) removal of a block revived by a hit).
Allocation pops the queue head; popping a cached block evicts it (``BlockRemoved``). A request's blocks are
released tail first, so its tail blocks are evicted before its prefix. A prefix hit never covers the last
token of a request: the step that samples the next token must compute at least one token.

With a host tier (``host_blocks > 0``, ``host_tier.HostTier``), a cached block popped for reuse is offloaded to
host memory instead of forgotten, and a prefix that continues past the device hits into host-held blocks is
loaded back (``find_host_prefix``, then ``allocate(..., host=...)``). The copies are recorded in ``transfers``
for the runner to execute before the step's forward pass. A host-held block is still this replica's cached
content: only leaving the host tier emits ``BlockRemoved``, and the ``/kv/blocks`` snapshot lists both tiers.

Invariants (``check_integrity``): used + cached + free == total; the queue holds exactly the ref-0 blocks;
ref counts equal the number of block tables holding the block; the digest map and block digests agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from foresight.hashing import DEFAULT_HASH_SEED, BlockHashMemo, block_id
from replicas.engine.host_tier import HostTier, Transfers
from replicas.engine.kv_events import BlockRemoved, BlockStored, KVEvent
from replicas.engine.request import Request


class Block:
    __slots__ = ("idx", "ref_cnt", "digest", "prev", "next")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.ref_cnt = 0
        self.digest: bytes | None = None
        self.prev: Block | None = None
        self.next: Block | None = None

    @property
    def block_hash(self) -> int | None:
        return None if self.digest is None else block_id(self.digest)


class FreeQueue:
    """Doubly linked LRU queue of ref-0 blocks: popleft (evict oldest), append, O(1) remove."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        self._head = Block(-1)
        self._tail = Block(-2)
        self._head.next, self._tail.prev = self._tail, self._head
        self.size = 0
        for b in blocks:
            self.append(b)

    def append(self, b: Block) -> None:
        last = self._tail.prev
        assert last is not None
        last.next, b.prev, b.next, self._tail.prev = b, last, self._tail, b
        self.size += 1

    def remove(self, b: Block) -> None:
        assert b.prev is not None and b.next is not None, "block not in the free queue"
        b.prev.next, b.next.prev = b.next, b.prev
        b.prev = b.next = None
        self.size -= 1

    def popleft(self) -> Block:
        b = self._head.next
        assert b is not None and b is not self._tail, "free queue is empty"
        self.remove(b)
        return b

    def __iter__(self) -> Iterator[Block]:
        b = self._head.next
        while b is not None and b is not self._tail:
            yield b
            b = b.next

    def __len__(self) -> int:
        return self.size


HASH_MEMO_MAX_BLOCKS = 1 << 16


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int = 16, hash_seed: Any = DEFAULT_HASH_SEED,
                 extra: Any = None, host_blocks: int = 0) -> None:
        if num_blocks <= 0:
            raise ValueError("the pool needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Digests of the blocks hashed lately, so that a prompt repeating a cached prefix looks its blocks up: as
        # many as the device and host tiers hold, within a bound on the memo's own memory (~0.4 kB a block).
        self.hash_memo = BlockHashMemo(min(num_blocks + host_blocks, HASH_MEMO_MAX_BLOCKS), hash_seed, extra)
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue = FreeQueue(self.blocks)
        self.cached: dict[bytes, Block] = {}
        self.num_cached_free = 0  # cached blocks with ref 0, kept in step so the load report is O(1)
        self._tables: dict[str, list[Block]] = {}
        self._hashes: dict[str, list[bytes]] = {}
        self._num_registered: dict[str, int] = {}  # leading blocks of a request already digested
        self.events: list[KVEvent] = []
        self.host = HostTier(host_blocks) if host_blocks > 0 else None
        self.transfers = Transfers()
        self.num_offloaded = 0  # blocks copied to the host tier, ever
        self.num_loaded = 0  # blocks copied back from it, ever

    # -- counts (DESIGN.md section 3) -------------------------------------------------------------------
    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_queue)

    @property
    def num_cached(self) -> int:
        return self.num_cached_free

    @property
    def num_host_cached(self) -> int:
        return len(self.host) if self.host is not None else 0

    @property
    def num_host_slots(self) -> int:
        return self.host.num_slots if self.host is not None else 0

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take (free and cached alike)."""
        return len(self.free_queue)

    # -- hashing ------------------------------------------------------------------------------------------
    def request_hashes(self, req: Request) -> list[bytes]:
        """Digests of the request's full blocks (prompt and output), extended incrementally."""
        hashes = self._hashes.setdefault(req.request_id, [])
        n_full = req.num_tokens // self.block_size
        if len(hashes) < n_full:
            tokens = req.all_token_ids
            hashes.extend(self.hash_memo.chain(tokens[: n_full * self.block_size], self.block_size,
                                               parent=hashes[-1] if hashes else None, start_block=len(hashes)))
        return hashes

    # -- allocation ---------------------------------------------------------------------------------------
    def find_prefix(self, req: Request) -> list[Block]:
        """The cached blocks of the request's longest cached prefix, leaving its last token uncovered."""
        max_blocks = (req.num_tokens - 1) // self.block_size
        hits: list[Block] = []
        for digest in self.request_hashes(req)[:max_blocks]:
            block = self.cached.get(digest)
            if block is None:
                break
            hits.append(block)
        return hits

    def find_host_prefix(self, req: Request, start: int) -> list[bytes]:
        """Digests of the blocks after the first ``start`` (the device hits) that continue the prefix in the host
        tier; empty without one. Same last-token rule as ``find_prefix``."""
        if self.host is None:
            return []
        max_blocks = (req.num_tokens - 1) // self.block_size
        found: list[bytes] = []
        for digest in self.request_hashes(req)[start:max_blocks]:
            if digest not in self.host:
                break
            found.append(digest)
        return found

    def blocks_needed(self, req: Request, num_new_tokens: int, prefix: Sequence[Block] = (), loads: int = 0) -> int:
        """Fresh blocks for ``num_new_tokens`` after ``prefix`` and ``loads`` host blocks (which take one each)."""
        hits = len(prefix) + loads
        computed = req.num_computed_tokens + hits * self.block_size
        held = len(self._tables.get(req.request_id, ())) + hits
        return max(0, cdiv(computed + num_new_tokens, self.block_size) - held) + loads

    def allocate(self, req: Request, num_new_tokens: int, prefix: Sequence[Block] = (),
                 host: Sequence[bytes] = ()) -> bool:
        """Give ``req`` blocks for ``num_new_tokens`` more tokens (after ``prefix``, a ``find_prefix`` result
        taken while ``req`` holds nothing, and ``host``, a ``find_host_prefix`` result loaded into fresh blocks).
        Returns False, changing nothing, when the pool is short."""
        need = self.blocks_needed(req, num_new_tokens, prefix, len(host))
        revived = sum(1 for b in prefix if b.ref_cnt == 0)
        if need > len(self.free_queue) - revived:
            return False
        table = self._tables.setdefault(req.request_id, [])
        for b in prefix:
            if b.ref_cnt == 0:
                self.free_queue.remove(b)
                self.num_cached_free -= 1
            b.ref_cnt += 1
            table.append(b)
        # Taken before any eviction below can offload into the host tier and push these digests out of it.
        slots = [self.host.take(d) for d in host] if self.host is not None else []
        removed: list[int] = []
        for i in range(need):
            b = self.free_queue.popleft()
            if b.digest is not None:
                self._evict(b, removed)
            b.ref_cnt = 1
            table.append(b)
            if i < len(slots):  # a host hit: its content comes back into this block before the forward pass
                b.digest = host[i]
                self.cached[b.digest] = b
                self.transfers.loads.append((slots[i], b.idx))
        self.num_loaded += len(slots)
        if prefix or host:
            self._num_registered[req.request_id] = len(prefix) + len(host)  # ``req`` held nothing before
        if removed:
            self.events.append(BlockRemoved(removed))
        if need or prefix or len(req.block_ids) != len(table):
            req.block_ids = [b.idx for b in table]
        return True

    def _evict(self, b: Block, removed: list[int]) -> None:
        """Take reusable content out of the ref-0 block ``b``: to the host tier when there is one, else gone."""
        digest = b.digest
        assert digest is not None
        del self.cached[digest]
        b.digest = None
        self.num_cached_free -= 1
        stored = self.host.put(digest) if self.host is not None else None
        if stored is None:
            removed.append(block_id(digest))
            return
        slot, pushed_out = stored
        self.transfers.offloads.append((b.idx, slot))
        self.num_offloaded += 1
        if pushed_out is not None:
            removed.append(block_id(pushed_out))

    # -- steps ------------------------------------------------------------------------------------------
    def begin_step(self) -> None:
        """The previous step (and its transfers) has run: host slots it loaded from are free again."""
        if self.host is not None:
            self.host.release_pending()

    def take_transfers(self) -> Transfers | None:
        """The copies recorded since the last call, for the step about to run (None when there are none)."""
        if not self.transfers:
            return None
        out, self.transfers = self.transfers, Transfers()
        return out

    def forget_loaded(self, transfers: Transfers | None) -> None:
        """A step failed before its copies surely ran: neither the blocks it loaded nor the host slots it offloaded
        into hold content to be trusted (a rare path: the host-slot lookup scans the tier)."""
        if transfers is None:
            return
        removed: list[int] = []
        if self.host is not None and transfers.offloads:
            written = {slot for _, slot in transfers.offloads}
            for digest in [d for d, slot in self.host.lru.items() if slot in written]:
                self.host.discard(digest)
                removed.append(block_id(digest))
        for _, idx in transfers.loads:
            b = self.blocks[idx]
            if b.digest is not None and self.cached.get(b.digest) is b:
                removed.append(block_id(b.digest))
                del self.cached[b.digest]
                b.digest = None
                if b.ref_cnt == 0:
                    self.num_cached_free -= 1
        if removed:
            self.events.append(BlockRemoved(removed))

    def cache_full_blocks(self, req: Request) -> None:
        """Register the request's computed full blocks under their digests (``BlockStored``)."""
        table = self._tables.get(req.request_id)
        if not table:
            return
        n_full = min(req.num_computed_tokens // self.block_size, len(table))
        start = self._num_registered.get(req.request_id, 0)
        if n_full <= start:
            return
        hashes = self.request_hashes(req)
        tokens = req.all_token_ids
        stored: BlockStored | None = None
        for i in range(start, n_full):
            b, digest = table[i], hashes[i]
            if b.digest is not None or digest in self.cached:
                stored = None  # already registered (a hit), or the same content sits in another block
                continue
            if self.host is not None and digest in self.host:
                self.host.discard(digest)  # computed here again meanwhile: tiers stay exclusive
            b.digest = digest
            self.cached[digest] = b
            if stored is None:
                parent = block_id(hashes[i - 1]) if i > 0 else None
                stored = BlockStored([], parent, [], self.block_size)
                self.events.append(stored)
            stored.block_hashes.append(block_id(digest))
            stored.token_ids.extend(tokens[i * self.block_size : (i + 1) * self.block_size])
        self._num_registered[req.request_id] = n_full

    def free(self, req: Request, *, forget: bool = True) -> None:
        """Release the request's blocks, tail first. ``forget=False`` (preemption) keeps its digests."""
        table = self._tables.pop(req.request_id, [])
        for b in reversed(table):
            b.ref_cnt -= 1
            if b.ref_cnt == 0:
                self.free_queue.append(b)
                if b.digest is not None:
                    self.num_cached_free += 1
        req.block_ids = []
        self._num_registered.pop(req.request_id, None)
        if forget:
            self._hashes.pop(req.request_id, None)

    def drain_events(self) -> list[KVEvent]:
        events, self.events = self.events, []
        return events

    def cached_block_hashes(self) -> list[int]:
        """The 64-bit ids of every block holding reusable content (used or not, either tier): the /kv/blocks
        snapshot."""
        host = self.host.lru if self.host is not None else ()
        return [block_id(d) for d in self.cached] + [block_id(d) for d in host]

    def table(self, request_id: str) -> list[Block]:
        return list(self._tables.get(request_id, ()))

    # -- invariants ---------------------------------------------------------------------------------------
    def check_integrity(self) -> None:
        in_queue = list(self.free_queue)
        assert len(in_queue) == len(self.free_queue), "queue size out of step"
        assert len({b.idx for b in in_queue}) == len(in_queue), "a block is queued twice"
        refs = [0] * self.num_blocks
        for table in self._tables.values():
            for b in table:
                refs[b.idx] += 1
        for b in self.blocks:
            assert b.ref_cnt == refs[b.idx], f"block {b.idx}: ref {b.ref_cnt} != {refs[b.idx]} tables"
            assert (b.ref_cnt == 0) == (b.prev is not None), f"block {b.idx}: queued iff unreferenced"
            if b.digest is not None:
                assert self.cached.get(b.digest) is b, f"block {b.idx}: digest not mapped to it"
        for digest, b in self.cached.items():
            assert b.digest == digest, "cache map points at a block with another digest"
        used = sum(1 for b in self.blocks if b.ref_cnt > 0)
        cached = sum(1 for b in self.blocks if b.ref_cnt == 0 and b.digest is not None)
        free = sum(1 for b in self.blocks if b.ref_cnt == 0 and b.digest is None)
        assert used == self.num_used and cached == self.num_cached, "counters out of step"
        assert used + cached + free == self.num_blocks, "free + cached + used != total"
        if self.host is not None:
            self.host.check_integrity()
            assert not any(d in self.cached for d in self.host.lru), "a digest in both tiers"
        for rid, table in self._tables.items():
            hashes = self._hashes.get(rid, [])
            for i, b in enumerate(table[: self._num_registered.get(rid, 0)]):
                if b.digest is not None:
                    assert i < len(hashes) and hashes[i] == b.digest, "a table block holds foreign content"
