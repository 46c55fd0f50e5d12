"""The block-hash test vector of DESIGN.md section 2, computed independently from the definition."""

from __future__ import annotations

import hashlib

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from foresight.hashing import BlockHashMemo, block_id, block_ids, chain_hashes, root_hash


def reference_ids(tokens: list[int], block_size: int, seed: object, extra: object = None) -> list[int]:
    """Straight from the definition: sha256 over canonical CBOR, chained, last 8 bytes big-endian."""
    prev = hashlib.sha256(cbor2.dumps(seed, canonical=True)).digest()
    ids = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        prev = hashlib.sha256(cbor2.dumps([prev, tokens[start : start + block_size], extra], canonical=True)).digest()
        ids.append(int.from_bytes(prev[-8:], "big"))
    return ids


def test_vector_pinned() -> None:
    # Pinned so that a change of encoding (or of the default seed) cannot slip through unnoticed:
    # gateways and replicas of different versions must agree on these ids.
    assert block_ids(list(range(40)), 16, "foresight") == [892902885716499316, 10321358824994096048]
    assert block_ids(list(range(32)), 16, 0) == [1280541317464734428, 12827858965472274626]


def test_vector_matches_definition() -> None:
    tokens = [7, 3, 9, 1] * 12
    assert block_ids(tokens, 16, "foresight") == reference_ids(tokens, 16, "foresight")
    assert block_ids(tokens, 4, 42, extra=["lora-a"]) == reference_ids(tokens, 4, 42, extra=["lora-a"])


def test_only_full_blocks_and_chaining() -> None:
    tokens = list(range(47))
    assert len(block_ids(tokens, 16)) == 2
    # Same second block after a different first block gives a different id (chained).
    a = block_ids([1] * 16 + [5] * 16)
    b = block_ids([2] * 16 + [5] * 16)
    assert a[1] != b[1]
    assert block_id(root_hash()) != block_id(root_hash("other-seed"))


@given(st.lists(st.integers(0, 200_000), max_size=100), st.integers(1, 20))
def test_incremental_equals_whole(tokens: list[int], block_size: int) -> None:
    whole = chain_hashes(tokens, block_size)
    cut = len(whole) // 2
    parent = whole[cut - 1] if cut else None
    assert whole[:cut] + chain_hashes(tokens, block_size, parent=parent, start_block=cut) == whole


@given(st.lists(st.integers(0, 70_000), max_size=90), st.sampled_from([1, 4, 16]), st.integers(1, 6))
def test_memo_chains_exactly_as_the_definition(tokens: list[int], block_size: int, capacity: int) -> None:
    memo = BlockHashMemo(capacity, seed=3, extra=["lora-a"])
    want = chain_hashes(tokens, block_size, 3, ["lora-a"])
    for _ in range(2):  # a cold memo, then a warm one (or one that evicted what it held)
        assert memo.chain(tokens, block_size) == want
        assert len(memo) <= capacity
    # Incrementally, from a parent digest, as a request that grows.
    half = len(want) // 2
    assert memo.chain(tokens, block_size, parent=want[half - 1] if half else None, start_block=half) == want[half:]


def test_memo_looks_up_a_repeated_prefix() -> None:
    memo = BlockHashMemo(100)
    first = list(range(3, 67))  # 4 blocks of 16
    memo.chain(first, 16)
    assert (memo.hits, memo.misses) == (0, 4)
    turn = [*first, *range(100, 132)]  # the next turn: the same 4 blocks, 2 new
    assert memo.chain(turn, 16) == chain_hashes(turn, 16)
    assert (memo.hits, memo.misses) == (4, 6)
    other = [5, *first[1:]]  # another first block: every block differs (chained)
    memo.chain(other, 16)
    assert memo.misses == 10
    small = BlockHashMemo(2)
    small.chain(turn, 16)
    assert len(small) == 2  # only the most recent blocks stay
    small.chain(turn, 16)
    assert small.hits == 0  # each lookup misses a block the previous misses pushed out
