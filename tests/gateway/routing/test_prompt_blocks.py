"""Precise-mode prompt keys: the replicas' block ids of a prompt, memoised per text and per block."""

from __future__ import annotations

from pathlib import Path

from foresight.hashing import block_ids
from gateway.routing.prompt_blocks import PromptBlocks


def test_ids_are_the_design_ids_and_a_next_turn_reuses_the_earlier_blocks(tiny_model_dir: Path) -> None:
    pb = PromptBlocks(str(tiny_model_dir), 4, "seed-x")
    first = "the quick brown fox jumps over the lazy dog " * 4
    n, ids = pb.tokens_and_ids(first)
    tokens = pb.tokenizer.encode(first, add_special_tokens=False).ids
    assert n == len(tokens) and ids == block_ids(tokens, 4, "seed-x") and len(ids) >= 4
    assert pb.tokens_and_ids(first)[1] is ids  # the same text: memoised whole
    misses = pb.hash_memo.misses
    turn = first + "and then it ran far away into the green woods"
    turn_tokens = pb.tokenizer.encode(turn, add_special_tokens=False).ids
    assert pb.block_ids(turn) == block_ids(turn_tokens, 4, "seed-x")
    shared = 0  # leading full blocks the two token lists have in common
    while shared < len(ids) and turn_tokens[4 * shared: 4 * shared + 4] == tokens[4 * shared: 4 * shared + 4]:
        shared += 1
    assert shared > 0 and pb.hash_memo.hits == shared
    assert pb.hash_memo.misses == misses + len(turn_tokens) // 4 - shared
