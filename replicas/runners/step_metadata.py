"""Per-step attention metadata, built once per step and shared by every layer.

The packed step holds each scheduled request's new tokens back to back (batch 1, no padding), decodes
(one new token each) first, then multi-token chunks (prefills, chunked or with a cached prefix). For each
request we know its first new position ``start``, its number of new tokens and its block table; from those we
derive, with vectorised torch ops rather than per-token Python loops:

- ``slot_mapping`` ``[num_tokens]``: where each new token's K/V is written in the flat cache;
- for decodes, ``DecodeGroup``s of consecutive decodes whose context lengths are within 2x of each other (the
  runner orders decodes longest first, so usually one group): the slots of every context token ``[rows,
  max_ctx]``, padded with slot 0, so a group attends in one batched call and padding at most doubles the
  gathered memory;
- for multi-token chunks, one ``PrefillSegment`` each (its packed query range and, when it has earlier context,
  the slots of its whole context);
- lazily, the varlen view (``cu_seqlens`` and packed context slots) that flash-attn and flex attention take.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SeqSpan:
    """One request's share of a step: positions ``[start, start + num_new)`` over block table ``block_ids``."""

    start: int
    num_new: int
    block_ids: list[int]

    @property
    def ctx_len(self) -> int:
        return self.start + self.num_new


@dataclass
class DecodeGroup:
    row_start: int  # packed rows [row_start, row_end) are this group's decodes
    row_end: int
    slots: torch.Tensor  # [rows, max_ctx]
    ctx_lens: torch.Tensor  # [rows]


@dataclass
class PrefillSegment:
    q_start: int  # packed row of the first new token
    q_end: int
    start: int  # position of the first new token (tokens before it are already in the cache)
    slots: torch.Tensor | None  # [ctx_len] context slots; None when start == 0 (the new K/V is the whole context)

    @property
    def q_len(self) -> int:
        return self.q_end - self.q_start

    @property
    def ctx_len(self) -> int:
        return self.start + self.q_len


@dataclass
class VarlenView:
    """Packed context for varlen kernels: sequence ``i`` has queries ``cu_q[i]:cu_q[i+1]`` and keys
    ``cu_k[i]:cu_k[i+1]`` (gathered from ``k_slots``); ``q_pos``/``k_pos`` are positions, ``q_seq``/``k_seq`` the
    sequence index of each row."""

    cu_q: torch.Tensor
    cu_k: torch.Tensor
    k_slots: torch.Tensor
    max_q: int
    max_k: int
    q_pos: torch.Tensor
    k_pos: torch.Tensor
    q_seq: torch.Tensor
    k_seq: torch.Tensor


def _slots_for(table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    return table[..., positions // block_size] * block_size + positions % block_size


@dataclass
class StepMetadata:
    spans: list[SeqSpan]
    block_size: int
    device: torch.device
    num_tokens: int = 0
    num_decodes: int = 0
    slot_mapping: torch.Tensor | None = None
    decodes: list[DecodeGroup] = field(default_factory=list)
    prefills: list[PrefillSegment] = field(default_factory=list)
    scratch: dict[object, object] = field(default_factory=dict)  # per-step state of the chosen kernel
    _masks: dict[tuple[str, int | None], torch.Tensor] = field(default_factory=dict)
    _varlen: VarlenView | None = None

    @classmethod
    def build(cls, spans: list[SeqSpan], block_size: int, device: torch.device | str) -> StepMetadata:
        """``spans`` in packed order, decodes (``num_new == 1``) first."""
        device = torch.device(device)
        meta = cls(spans, block_size, device)
        nd = 0
        while nd < len(spans) and spans[nd].num_new == 1:
            nd += 1
        if any(s.num_new == 1 for s in spans[nd:]) or any(s.num_new <= 0 for s in spans):
            raise ValueError("spans must list single-token decodes first and have at least one new token each")
        meta.num_decodes = nd
        meta.num_tokens = sum(s.num_new for s in spans)
        new_slots: list[torch.Tensor] = []
        g0 = 0
        while g0 < nd:
            g1 = g0 + 1
            lo, hi = spans[g0].ctx_len, spans[g0].ctx_len
            while g1 < nd and max(hi, spans[g1].ctx_len) <= 2 * min(lo, spans[g1].ctx_len):
                lo, hi = min(lo, spans[g1].ctx_len), max(hi, spans[g1].ctx_len)
                g1 += 1
            dec = spans[g0:g1]
            ctx = torch.tensor([s.ctx_len for s in dec], dtype=torch.long)
            nblk = -(-hi // block_size)
            table = torch.tensor([(s.block_ids[:nblk] + [0] * nblk)[:nblk] for s in dec], dtype=torch.long)
            ar = torch.arange(hi)
            slots = _slots_for(table, ar, block_size)
            slots = torch.where(ar[None, :] < ctx[:, None], slots, 0)  # padding reads slot 0, always masked
            new_slots.append(slots[torch.arange(len(dec)), ctx - 1])
            meta.decodes.append(DecodeGroup(g0, g1, slots.to(device), ctx.to(device)))
            g0 = g1
        q = nd
        for s in spans[nd:]:
            nblk = -(-s.ctx_len // block_size)
            table = torch.tensor(s.block_ids[:nblk], dtype=torch.long)
            slots = _slots_for(table, torch.arange(s.ctx_len), block_size)
            new_slots.append(slots[s.start:])
            seg_slots = slots.to(device) if s.start > 0 else None
            meta.prefills.append(PrefillSegment(q, q + s.num_new, s.start, seg_slots))
            q += s.num_new
        meta.slot_mapping = torch.cat(new_slots).to(device)
        return meta

    def decode_mask(self, group: int, window: int | None) -> torch.Tensor:
        """``[rows, 1, 1, max_ctx]`` bool, True where a decode of ``group`` attends (its context, within
        ``window``)."""
        key = (f"decode{group}", window)
        if key not in self._masks:
            g = self.decodes[group]
            ar = torch.arange(g.slots.shape[1], device=self.device)[None, :]
            ctx = g.ctx_lens[:, None]
            mask = ar < ctx
            if window is not None:
                mask &= ar >= ctx - window
            self._masks[key] = mask[:, None, None, :]
        return self._masks[key]

    def prefill_mask(self, index: int, window: int | None) -> torch.Tensor | None:
        """``[q_len, ctx_len]`` bool causal mask of prefill ``index``; None when plain ``is_causal`` is exact
        (no earlier context and no window that bites)."""
        seg = self.prefills[index]
        if seg.start == 0 and (window is None or window >= seg.q_len):
            return None
        key = (f"prefill{index}", window)
        if key not in self._masks:
            q_pos = torch.arange(seg.start, seg.ctx_len, device=self.device)[:, None]
            k_pos = torch.arange(seg.ctx_len, device=self.device)[None, :]
            mask = k_pos <= q_pos
            if window is not None:
                mask &= k_pos > q_pos - window
            self._masks[key] = mask
        return self._masks[key]

    def varlen(self) -> VarlenView:
        """The packed view for varlen kernels (built on first use)."""
        if self._varlen is None:
            q_lens = [s.num_new for s in self.spans]
            k_lens = [s.ctx_len for s in self.spans]
            slots = []
            for s in self.spans:
                nblk = -(-s.ctx_len // self.block_size)
                table = torch.tensor(s.block_ids[:nblk], dtype=torch.long)
                slots.append(_slots_for(table, torch.arange(s.ctx_len), self.block_size))
            seq = torch.arange(len(self.spans))
            q_pos = torch.cat([torch.arange(s.start, s.ctx_len) for s in self.spans])
            k_pos = torch.cat([torch.arange(s.ctx_len) for s in self.spans])
            dev = self.device
            self._varlen = VarlenView(
                cu_q=torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=dev),
                cu_k=torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int32, device=dev),
                k_slots=torch.cat(slots).to(dev), max_q=max(q_lens), max_k=max(k_lens),
                q_pos=q_pos.to(dev), k_pos=k_pos.to(dev),
                q_seq=seq.repeat_interleave(torch.tensor(q_lens)).to(dev),
                k_seq=seq.repeat_interleave(torch.tensor(k_lens)).to(dev),
            )
        return self._varlen
