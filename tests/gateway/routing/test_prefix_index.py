"""The prefix index: hits, misses, LRU eviction, the memory bound, precise mode's events and snapshot resync."""

from __future__ import annotations

from gateway.routing.prefix_index import PrefixIndex
from gateway.routing.prefix_index_approx import chunk_hashes
from gateway.routing.prefix_index_precise import PreciseIndex

TEXT = "".join(f"sentence number {i:04d} of a long shared system prompt. " for i in range(40))


def test_chunk_hashes_are_chained_full_chunks_and_seeded_by_model() -> None:
    a = chunk_hashes(TEXT, "m", 64)
    assert len(a) == len(TEXT) // 64
    assert chunk_hashes(TEXT + "tail", "m", 64)[: len(a)] == a  # a longer prompt shares the prefix chain
    b = chunk_hashes("X" + TEXT[1:], "m", 64)
    assert not set(a) & set(b)  # a change in the first chunk changes every later hash (chaining)
    assert chunk_hashes(TEXT, "other-model", 64)[0] != a[0]
    assert chunk_hashes("é" * 130, "m", 64) == chunk_hashes("é" * 128, "m", 64)  # characters, not bytes


def test_match_hit_partial_and_miss() -> None:
    idx = PrefixIndex()
    keys = chunk_hashes(TEXT, "m", 64)
    idx.insert("r1", keys)
    idx.insert("r2", keys[:10])
    assert idx.match(keys) == {"r1": len(keys), "r2": 10}
    assert idx.match(keys, candidates=["r2", "r3"]) == {"r2": 10}
    assert idx.match(chunk_hashes("unrelated " * 50, "m", 64)) == {}
    assert idx.match([]) == {}


def test_lru_eviction_trims_tails_and_respects_the_bound() -> None:
    idx = PrefixIndex(default_capacity=30)
    a = chunk_hashes(TEXT, "m", 64)[:20]
    b = chunk_hashes("other " + TEXT, "m", 64)[:20]
    idx.insert("r", a)
    idx.insert("r", b)  # 40 > 30: the 10 least recently used go, which are a's tail
    assert len(idx) == 30 and idx.evictions == 10
    assert idx.match(a) == {"r": 10}  # a's head survives, so the shared prefix still matches
    assert idx.match(b) == {"r": 20}
    idx.set_capacity("r", 5)
    assert len(idx) == 5 and len(idx.holders) == 5  # holders stay in step with the LRU
    idx.remove_replica("r")
    assert len(idx) == 0 and not idx.holders


def test_memory_bound_holds_under_many_prompts() -> None:
    idx = PrefixIndex(default_capacity=100)
    for i in range(200):
        idx.insert(f"r{i % 4}", chunk_hashes(f"prompt {i} " * 40, "m", 64))
    assert len(idx) <= 4 * 100
    assert sum(len(h) for h in idx.holders.values()) == len(idx)


def stored(*ids: int) -> dict:
    return {"type": "BlockStored", "block_hashes": list(ids), "parent_block_hash": None, "token_ids": [],
            "block_size": 16}


def removed(*ids: int) -> dict:
    return {"type": "BlockRemoved", "block_hashes": list(ids)}


def test_precise_index_applies_events_in_sequence() -> None:
    p = PreciseIndex()
    assert p.apply_batch("r", 1, [stored(1, 2, 3)], epoch="e1") is False  # never synced: snapshot first
    p.load_snapshot("r", [], seq=0, epoch="e1")  # replays the buffered batch 1 on top of the empty snapshot
    assert p.match([1, 2, 3]) == {"r": 3}
    assert p.apply_batch("r", 2, [removed(2)], epoch="e1")
    assert p.match([1, 2, 3]) == {"r": 1}
    assert p.apply_batch("r", 2, [removed(1)], epoch="e1")  # duplicate delivery is ignored
    assert p.match([1]) == {"r": 1}
    assert p.apply_batch("r", 3, [{"type": "AllBlocksCleared"}], epoch="e1")
    assert p.match([1]) == {}


def test_precise_index_resyncs_after_a_gap_without_losing_or_repeating_events() -> None:
    p = PreciseIndex()
    p.load_snapshot("r", [1, 2], seq=5, epoch="e1")
    assert p.apply_batch("r", 6, [stored(3)], epoch="e1")
    assert p.apply_batch("r", 9, [stored(9)], epoch="e1") is False  # 7 and 8 were lost
    assert p.needs_resync("r") and p.streams["r"].gaps == 1
    p.begin_resync("r")
    assert not p.needs_resync("r")  # a fetch is under way
    assert p.apply_batch("r", 10, [removed(1)], epoch="e1") is False  # buffered during the fetch
    # The snapshot was taken after batch 9: it has 9 but still has 1; batch 10 (newer) must be replayed on top.
    p.load_snapshot("r", [1, 2, 3, 4, 9], seq=9)
    assert p.match([2, 3]) == {"r": 2} and p.match([1]) == {} and p.match([9]) == {"r": 1}
    assert p.streams["r"].seq == 10 and not p.needs_resync("r")
    assert p.apply_batch("r", 11, [stored(11)], epoch="e1")


def test_precise_index_resyncs_after_a_replica_restart() -> None:
    p = PreciseIndex()
    p.load_snapshot("r", [1, 2], seq=3, epoch="old")
    assert p.apply_batch("r", 1, [stored(7)], epoch="new") is False  # new epoch: restart detected
    assert p.needs_resync("r") and p.streams["r"].gaps == 1
    p.load_snapshot("r", [], seq=0, epoch="new")
    assert p.match([1]) == {} and p.match([7]) == {"r": 1}


def test_precise_index_is_bounded() -> None:
    p = PreciseIndex(capacity=8)
    p.load_snapshot("r", range(100), seq=0)
    assert len(p.index) == 8


def test_binary_search_match_equals_the_walk_on_prefix_closed_chains() -> None:
    import random

    rng = random.Random(3)
    fast, slow = PrefixIndex(default_capacity=400), PrefixIndex(default_capacity=400, prefix_closed=False)
    chains = [chunk_hashes(f"conversation {c} " * 200 + " turn" * t * 30, "m", 16) for c in range(6) for t in range(4)]
    for _ in range(300):
        replica, chain = f"r{rng.randrange(5)}", rng.choice(chains)
        cut = rng.randrange(1, len(chain) + 1)
        for idx in (fast, slow):
            idx.insert(replica, chain[:cut])
    assert fast.evictions > 0
    for chain in chains:
        assert fast.match(chain) == slow.match(chain)


async def test_shared_index_publishes_a_burst_of_decisions_as_one_message() -> None:
    import asyncio

    from gateway.routing.prefix_index_shared import SharedApproxIndex
    from gateway.state.memory import MemoryStore

    store = MemoryStore()
    messages: list[bytes] = []
    publish = store.publish

    async def counted(channel: str, message: bytes) -> None:
        messages.append(message)
        await publish(channel, message)

    store.publish = counted  # type: ignore[method-assign]
    # A long retry interval: the deltas must go out because they were queued, not on a periodic tick.
    a = SharedApproxIndex(PrefixIndex(), store, "a", interval=30.0, flush_delay=0.01)
    b = SharedApproxIndex(PrefixIndex(), store, "b", interval=30.0)
    await a.start()
    await b.start()
    try:
        for i in range(3):
            a.record(f"r{i}", [100 + i, 200 + i])
        for _ in range(500):
            if b.applied_remote == 3:
                break
            await asyncio.sleep(0.01)
        assert b.applied_remote == 3 and a.published == 3 and len(messages) == 1
        assert b.index.match([101, 201]).get("r1") == 2  # the delta landed in the peer's index
    finally:
        await a.close()
        await b.close()
