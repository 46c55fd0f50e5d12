"""Steady decode: reuse the previous step's packed inputs when a step only advances it by one token each.

Most steps of a busy replica are the same running requests decoding one more token. Packing them again (block
table slices, spans, the decode groups' tensors) costs per-request Python on every step. When the batch is
exactly the previous all-decode step's requests, in the same order, each advanced by the one token it decoded,
and no request starts a new KV block, the next step's metadata follows from the last by +1: positions, slots and
context lengths shift by one, the block tables and the packed order stay. Any other batch (a request finished,
arrived or was preempted, a prefill, a block boundary) is packed from scratch and becomes the new reference.
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
            # The new token sits at position ``end``; ``end % block_size == 0`` would start a new block.
            if (chunk.request is not req or chunk.num_new_tokens != 1 or not chunk.sample
                    or req.num_computed_tokens != end or end % block_size == 0):
                return None
        prev = self.step
        order = prev.sample_chunks  # packed row -> chunk index (every row samples)
        tokens = [r.token_at(r.num_computed_tokens) for r in (chunks[ci].request for ci in order)]
        meta = _advanced(prev.meta)
        step = PackedStep(num_chunks=prev.num_chunks, token_ids=tokens, spans=meta.spans, keep_rows=prev.keep_rows,
                          sample_chunks=order, params=prev.params, request_ids=prev.request_ids, meta=meta,
                          position_ids=prev.position_ids + 1)
        self.ends = [e + 1 for e in self.ends]
        self.step = step
        return step


def _advanced(meta: StepMetadata | None) -> StepMetadata:
    """``meta`` (decodes only) one token later: same groups and block tables, every position + 1."""
    assert meta is not None and not meta.prefills and meta.slot_mapping is not None
    spans = [SeqSpan(s.start + 1, 1, s.block_ids) for s in meta.spans]
    out = StepMetadata(spans, meta.block_size, meta.device, meta.dtype, num_tokens=meta.num_tokens,
                       num_decodes=meta.num_decodes, slot_mapping=meta.slot_mapping + 1)
    # No row starts a new block, so each slot is the next one of the same block and no table widens.
    # Each group's kept K/V (``DecodeContext``) goes along: the same rows over the same tables, one token further.
    out.decodes = [DecodeGroup(g.row_start, g.row_end, g.blocks, g.ctx_lens + 1, g.context) for g in meta.decodes]
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
