"""Block pool: prefix caching, eviction order, and its invariants under random operation sequences."""

from __future__ import annotations

import hashlib

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from foresight.hashing import block_id, block_ids
from replicas.engine.block_pool import BlockPool
from replicas.engine.kv_events import BlockRemoved, BlockStored
from replicas.engine.request import Request, SamplingParams

BS = 4


def make(rid: str, tokens: list[int]) -> Request:
    return Request(rid, list(tokens), SamplingParams())


def admit(pool: BlockPool, req: Request) -> int:
    """Admit a request the way the scheduler does and compute its whole prompt; returns the hit in tokens."""
    prefix = pool.find_prefix(req)
    assert pool.allocate(req, req.num_tokens - len(prefix) * BS, prefix)
    req.num_computed_tokens = req.num_tokens
    pool.cache_full_blocks(req)
    return len(prefix) * BS


def test_block_ids_follow_the_design_definition() -> None:
    pool = BlockPool(8, BS, hash_seed="seed-x")
    req = make("a", list(range(10)))
    admit(pool, req)
    # Independent computation from DESIGN.md section 2 with cbor2 + hashlib.
    prev = hashlib.sha256(cbor2.dumps("seed-x", canonical=True)).digest()
    expected = []
    for i in range(2):
        prev = hashlib.sha256(cbor2.dumps([prev, list(range(i * BS, (i + 1) * BS)), None], canonical=True)).digest()
        expected.append(int.from_bytes(prev[-8:], "big"))
    assert sorted(pool.cached_block_hashes()) == sorted(expected)
    assert expected == block_ids(list(range(10)), BS, "seed-x")
    [stored] = pool.drain_events()
    assert isinstance(stored, BlockStored) and stored.block_hashes == expected and stored.parent_block_hash is None
    assert stored.token_ids == list(range(8)) and stored.block_size == BS


def test_prefix_hit_revives_cached_blocks_and_leaves_the_last_token() -> None:
    pool = BlockPool(8, BS)
    a = make("a", list(range(12)))
    admit(pool, a)
    a_blocks = list(a.block_ids)
    pool.free(a)
    assert pool.num_cached == 3 and pool.num_used == 0
    b = make("b", list(range(12)))  # identical: the hit stops one block short so the last token is computed
    assert admit(pool, b) == 8
    assert b.block_ids[:2] == a_blocks[:2] and b.block_ids[2] != a_blocks[2] or pool.num_cached == 0
    assert all(pool.blocks[i].block_hash is not None for i in b.block_ids[:2])  # revived with their hashes
    c = make("c", list(range(13)))  # one more token: all three blocks hit
    assert admit(pool, c) == 12
    pool.check_integrity()
    assert pool.blocks[pool.table("c")[0].idx].ref_cnt == 2
    # b and c found a's blocks by digest without hashing them again (the pool's memo); the digests are the same.
    assert pool.hash_memo.hits == 3 + 3 and pool.hash_memo.misses == 3
    assert [block_id(d) for d in pool.request_hashes(c)] == block_ids(list(range(13)), BS)


def test_tail_blocks_are_evicted_first_and_reported() -> None:
    pool = BlockPool(4, BS)
    a = make("a", list(range(16)))
    admit(pool, a)
    tail_hash = pool.table("a")[-1].block_hash
    head_hash = pool.table("a")[0].block_hash
    pool.free(a)
    pool.drain_events()
    b = make("b", [100 + t for t in range(3)])
    admit(pool, b)  # needs one block: evicts a's tail, not its prefix
    [removed] = pool.drain_events()
    assert isinstance(removed, BlockRemoved) and removed.block_hashes == [tail_hash]
    assert head_hash in pool.cached_block_hashes() and tail_hash not in pool.cached_block_hashes()
    pool.check_integrity()


def test_allocation_fails_cleanly_when_short() -> None:
    pool = BlockPool(3, BS)
    a = make("a", list(range(8)))
    admit(pool, a)
    b = make("b", list(range(50, 62)))
    assert not pool.allocate(b, 12)
    assert pool.table("b") == [] and pool.num_used == 2
    pool.check_integrity()


def test_duplicate_content_is_cached_once() -> None:
    pool = BlockPool(8, BS)
    a, b = make("a", list(range(9))), make("b", list(range(9)))
    assert pool.allocate(a, 9) and pool.allocate(b, 9)  # both before either is computed: no hit
    for r in (a, b):
        r.num_computed_tokens = 9
        pool.cache_full_blocks(r)
    assert len(pool.cached_block_hashes()) == 2
    pool.free(a)
    pool.free(b)
    pool.check_integrity()
    assert pool.num_cached == 2 and pool.num_free == 8


# -- random operation sequences ---------------------------------------------------------------------------
ops = st.lists(
    st.tuples(st.sampled_from(["admit", "grow", "free", "preempt"]), st.integers(0, 5),
              st.lists(st.integers(0, 3), min_size=1, max_size=14)),
    min_size=1, max_size=40,
)


@settings(max_examples=120, deadline=None)
@given(ops)
def test_invariants_hold_after_every_operation(seq: list[tuple[str, int, list[int]]]) -> None:
    pool = BlockPool(10, BS)
    live: dict[int, Request] = {}
    stored: set[int] = set()
    for n, (op, slot, tokens) in enumerate(seq):
        req = live.get(slot)
        if op == "admit" and req is None:
            req = make(f"r{n}", tokens)
            prefix = pool.find_prefix(req)
            assert len(prefix) * BS < req.num_tokens  # the last token is always recomputed
            if pool.allocate(req, req.num_tokens - len(prefix) * BS, prefix):
                req.num_computed_tokens = req.num_tokens
                pool.cache_full_blocks(req)
                live[slot] = req
            else:
                assert pool.table(req.request_id) == []
        elif op == "grow" and req is not None:
            extra = tokens[: 1 + slot % 3]
            if pool.allocate(req, len(extra)):
                req.output_token_ids.extend(extra)
                req.num_computed_tokens = req.num_tokens
                pool.cache_full_blocks(req)
        elif op in ("free", "preempt") and req is not None:
            pool.free(req, forget=op == "free")
            del live[slot]
        pool.check_integrity()
        for ev in pool.drain_events():
            if isinstance(ev, BlockStored):
                assert not stored & set(ev.block_hashes), "a block stored twice without removal"
                stored |= set(ev.block_hashes)
            elif isinstance(ev, BlockRemoved):
                assert set(ev.block_hashes) <= stored, "removal of a block never stored"
                stored -= set(ev.block_hashes)
        # The events replayed give exactly the snapshot.
        assert stored == set(pool.cached_block_hashes())
        for r in live.values():  # every table covers its computed tokens, and cached blocks hold its content
            assert len(pool.table(r.request_id)) * BS >= r.num_computed_tokens
            ids = block_ids(r.all_token_ids, BS)
            for i, b in enumerate(pool.table(r.request_id)):
                if b.block_hash is not None:
                    assert b.block_hash == ids[i]
