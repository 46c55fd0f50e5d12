"""Steady decode: reuse the previous step's packed inputs when a step only advances it by one token each.

Most steps of a busy replica are the same running requests decoding one more token. Packing them again (block
table slices, spans, the decode groups' tensors) costs per-request Python on every step. When the batch is
exactly the previous all-decode step's requests, in the same order, each advanced by the one token it decoded,
the next step's metadata follows from the last by +1: positions, slots and context lengths shift by one, the
packed order stays, and a request whose token starts a new KV block takes that block into its padded decode-group
table (where a masked block 0 stood). Any other batch (a request finished, arrived or was preempted, a prefill, a
block beyond its group's padded width) is packed from scratch and becomes the new reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from replicas.runners.step_metadata import DecodeGroup, SeqSpan, StepMetadata

if TYPE_CHECKING:
    from replicas.engine.request import Request
    from replicas.runners.base import StepBatch
    from replicas.runners.torch_runner import PackedStep


@dataclass
class DecodeReference:
    """The last all-decode step: its requests in batch order, the context length each reached, and its packing."""

    requests: list[Request]
    ends: list[int]
    step: PackedStep
    block_starts: int = 0  # requests that started a KV block in the last step ``advance`` made

    @classmethod
    def of(cls, batch: StepBatch, step: PackedStep) -> DecodeReference | None:
        """A reference when every chunk of ``batch`` is a sampling one-token decode, else None."""
        chunks = batch.chunks
        if not chunks or len(step.keep_rows) != len(chunks) or len(step.token_ids) != len(chunks):
            return None
        if any(c.num_new_tokens != 1 or not c.sample for c in chunks):
            return None
        return cls([c.request for c in chunks], [c.request.num_computed_tokens + 1 for c in chunks], step)

    def advance(self, batch: StepBatch, block_size: int) -> PackedStep | None:
        """The packed step for ``batch`` if it continues this one (see the module docstring), else None."""
        from replicas.runners.torch_runner import PackedStep

        chunks = batch.chunks
        if len(chunks) != len(self.requests):
            return None
        for chunk, req, end in zip(chunks, self.requests, self.ends, strict=True):
            if (chunk.request is not req or chunk.num_new_tokens != 1 or not chunk.sample
                    or req.num_computed_tokens != end or end >= len(req.block_ids) * block_size):
                return None
        prev = self.step
        order = prev.sample_chunks  # packed row -> chunk index (every row samples)
        reqs = [chunks[ci].request for ci in order]
        # The new token sits at position ``end``; ``end % block_size == 0`` starts the block the scheduler added.
        starts = {row: (end // block_size, r.block_ids[end // block_size]) for row, (r, end) in
                  enumerate(zip(reqs, (self.ends[ci] for ci in order), strict=True)) if end % block_size == 0}
        meta = _advanced(prev.meta, starts)
        if meta is None:
            return None
        step = PackedStep(num_chunks=prev.num_chunks, token_ids=[r.token_at(r.num_computed_tokens) for r in reqs],
                          spans=meta.spans, keep_rows=prev.keep_rows, sample_chunks=order, params=prev.params,
                          request_ids=prev.request_ids, meta=meta, position_ids=prev.position_ids + 1)
        self.ends = [e + 1 for e in self.ends]
        self.step, self.block_starts = step, len(starts)
        return step


def _advanced(meta: StepMetadata | None, starts: dict[int, tuple[int, int]]) -> StepMetadata | None:
    """``meta`` (decodes only) one token later: every position + 1, and each packed row in ``starts`` writing the
    first slot of a new block (``(index in its table, block)``). None when such a block falls outside its group's
    padded table width."""
    assert meta is not None and not meta.prefills and meta.slot_mapping is not None
    bs = meta.block_size
    groups = meta.decodes
    tables = {}
    for row, (index, block) in starts.items():
        g = next(i for i, grp in enumerate(groups) if grp.row_start <= row < grp.row_end)
        if index >= groups[g].blocks.shape[1]:
            return None  # the table would widen: pack afresh
        tables.setdefault(g, []).append((row - groups[g].row_start, index, block))
    spans = [SeqSpan(s.start + 1, 1, s.block_ids if row not in starts else [*s.block_ids, starts[row][1]])
             for row, s in enumerate(meta.spans)]
    slots = meta.slot_mapping + 1
    if starts:
        rows = torch.tensor(list(starts), dtype=torch.long, device=meta.device)
        slots[rows] = torch.tensor([b for _, b in starts.values()], dtype=torch.long, device=meta.device) * bs
    out = StepMetadata(spans, bs, meta.device, meta.dtype, num_tokens=meta.num_tokens,
                       num_decodes=meta.num_decodes, slot_mapping=slots)
    # A row that starts a block takes it in its padded table, where block 0 stood (masked): the group's width, its
    # kept K/V (``DecodeContext``, whose entries below each row's context are unchanged) and the others' go along.
    for g, grp in enumerate(groups):
        blocks = grp.blocks
        if g in tables:
            blocks = blocks.clone()
            for r, index, block in tables[g]:
                blocks[r, index] = block
        out.decodes.append(DecodeGroup(grp.row_start, grp.row_end, blocks, grp.ctx_lens + 1, grp.context))
    # So do the full-context masks, each row opening the one position it now attends to (in place: the previous
    # step has run). A sliding-window mask would also close a position; it is rebuilt instead.
    for key, mask in meta._masks.items():
        kind, index, window = key
        if kind == "decode" and window is None:
            group = out.decodes[index]
            with torch.inference_mode():  # the forward pass made it, as an inference tensor
                mask.view(-1).index_fill_(0, group.context_slots(mask.shape[-1]), 0.0)
            out._masks[key] = mask
    return out
