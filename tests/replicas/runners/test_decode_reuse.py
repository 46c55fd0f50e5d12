"""Steady decode reuse: an advanced step equals a fresh pack of the same batch, and anything else packs afresh."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from replicas.engine.request import Request, SamplingParams
from replicas.runners.base import ScheduledChunk, StepBatch
from replicas.runners.step_metadata import StepMetadata
from replicas.runners.torch_runner import PackedStep, TorchRunner

BS = 16


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path) -> TorchRunner:
    r = TorchRunner(str(tiny_model_dir), kv_blocks=64)
    r.kv_capacity_blocks(BS)
    return r


def _decoding(rid: str, prompt_len: int, outputs: int, blocks: list[int]) -> Request:
    """A request that has computed its prompt and all but its last output token."""
    req = Request(rid, list(range(3, 3 + prompt_len)), SamplingParams(max_tokens=64, temperature=0.0))
    req.output_token_ids = [7 + i for i in range(outputs)]
    req.block_ids = blocks
    req.num_computed_tokens = prompt_len + outputs - 1
    return req


def _batch(reqs: list[Request]) -> StepBatch:
    return StepBatch([ScheduledChunk(r, 1, True) for r in reqs])


def _advance(reqs: list[Request], token: int = 11) -> None:
    """What the engine does after a step: the token is computed and a new one sampled."""
    for r in reqs:
        r.num_computed_tokens += 1
        r.output_token_ids.append(token)


def _same_as_fresh(runner: TorchRunner, step: PackedStep, reqs: list[Request]) -> None:
    """``step`` (reused) packs, attends and scores like a fresh pack of the same batch."""
    fresh = TorchRunner._pack(runner, _batch(reqs))
    assert step.token_ids == fresh.token_ids and step.sample_chunks == fresh.sample_chunks
    assert step.position_ids.tolist() == fresh.positions
    assert [(s.start, s.num_new, s.block_ids) for s in step.spans] == [
        (s.start, s.num_new, s.block_ids) for s in fresh.spans]
    want = StepMetadata.build(fresh.spans, BS, runner.device, runner.dtype)
    assert torch.equal(step.meta.slot_mapping, want.slot_mapping)
    for g, h in zip(step.meta.decodes, want.decodes, strict=True):
        assert (g.row_start, g.row_end) == (h.row_start, h.row_end)
        assert torch.equal(g.ctx_lens, h.ctx_lens) and torch.equal(g.blocks, h.blocks)
    # The reused step attends over the K/V its groups kept (``DecodeContext``), the fresh one gathers them.
    torch.testing.assert_close(runner.forward_logits(step), runner.forward_logits(fresh))
    assert all(set(g.context.keys) == {0, 1} for g in step.meta.decodes)
    # Its masks were carried from the previous step (one position opened per row), not built.
    for g in range(len(want.decodes)):
        assert torch.equal(step.meta.decode_mask(g, None), want.decode_mask(g, None))


def test_advanced_step_equals_a_fresh_pack_until_a_table_would_widen(runner: TorchRunner) -> None:
    # They write positions 19, 34 and 1 first, in two decode groups: [b, a] over 3 blocks, [c] over 1.
    reqs = [_decoding("a", 15, 5, [1, 2]), _decoding("b", 30, 5, [3, 4, 5]), _decoding("c", 1, 1, [6])]
    runner._decode_ref = None
    runner.pack(_batch(reqs))
    reused = runner.reused_steps
    masks = []
    for i in range(12):
        _advance(reqs)
        step = runner.pack(_batch(reqs))
        assert runner.reused_steps == reused + i + 1
        _same_as_fresh(runner, step, reqs)
        masks.append(step.meta.decode_mask(0, None))
    assert all(m is masks[0] for m in masks)
    # "a" now writes position 32, the first slot of its third block, inside its group's padded width: reused.
    reqs[0].block_ids.append(7)
    _advance(reqs)
    step = runner.pack(_batch(reqs))
    assert runner.reused_steps == reused + 13 and step.spans[1].block_ids == [1, 2, 7]
    assert runner._decode_ref.block_starts == 1
    assert step.meta.decodes[0].blocks.tolist() == [[3, 4, 5], [1, 2, 7]]
    _same_as_fresh(runner, step, reqs)
    # "b" now writes position 48, a fourth block its group's 3-block tables do not hold: packed afresh.
    reqs[1].block_ids.append(8)
    _advance(reqs)
    step = runner.pack(_batch(reqs))
    assert runner.reused_steps == reused + 13 and step.spans[0].block_ids == [3, 4, 5, 8]
    # "c" now writes position 16, but no block was added for it: not reused, and the fresh pack refuses the step.
    _advance(reqs)
    with pytest.raises(ValueError, match="does not cover"):
        runner.pack(_batch(reqs))
    assert runner.reused_steps == reused + 13


def test_a_changed_batch_is_packed_afresh(runner: TorchRunner) -> None:
    reqs = [_decoding("a", 15, 5, [1, 2]), _decoding("b", 30, 5, [3, 4, 5])]
    runner._decode_ref = None
    runner.pack(_batch(reqs))
    _advance(reqs)
    before = runner.reused_steps
    runner.pack(_batch(reqs[:1]))  # "b" finished
    assert runner.reused_steps == before
    _advance(reqs[:1])
    runner.pack(_batch(reqs[:1]))  # the new reference: reused again
    assert runner.reused_steps == before + 1
    runner.pack(_batch(reqs[:1]))  # not advanced (the step's tokens were never processed): afresh
    assert runner.reused_steps == before + 1


def test_decode_contexts_are_kept_within_their_memory_budget(tiny_model_dir: Path) -> None:
    small = TorchRunner(str(tiny_model_dir), kv_blocks=64, decode_context_memory=0)
    small.kv_capacity_blocks(BS)
    reqs = [_decoding("a", 15, 5, [1, 2]), _decoding("b", 30, 5, [3, 4, 5])]
    step = small.pack(_batch(reqs))
    assert [g.context for g in step.meta.decodes] == [None]
    layout = small.cache.layout
    # One group of 2 rows x 3 blocks: exactly its bytes fit; a byte less does not.
    need = 2 * 3 * layout.bytes_per_block
    for budget, kept in ((need, True), (need - 1, False)):
        small.decode_context_memory, small._decode_ref = budget, None
        step = small.pack(_batch(reqs))
        assert (step.meta.decodes[0].context is not None) is kept
        small.forward_logits(step)
    assert small.describe()["decode_context_memory"] == need - 1
    # Groups are judged one by one: a small group still fits after a big one did not.
    small.decode_context_memory, small._decode_ref = layout.bytes_per_block, None
    step = small.pack(_batch([*reqs, _decoding("c", 1, 1, [6])]))
    assert [g.context is not None for g in step.meta.decodes] == [False, True]
    small.on_idle()  # the engine has nothing to run: the reference and its buffers go
    assert small._decode_ref is None
    small.close()
