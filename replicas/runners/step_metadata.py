"""Per-step attention metadata, built once per step and shared by every layer.

The packed step holds each scheduled request's new tokens back to back (batch 1, no padding), decodes
(one new token each) first, then multi-token chunks (prefills, chunked or with a cached prefix). For each
request we know its first new position ``start``, its number of new tokens and its block table; from those we
derive, with vectorised torch ops rather than per-token Python loops:

- ``slot_mapping`` ``[num_tokens]``: where each new token's K/V is written in the flat cache;
- for decodes, ``DecodeGroup``s of consecutive decodes whose context lengths are within 2x of each other (the
  runner orders decodes longest first, so usually one group): their block tables ``[rows, max_blocks]``, padded
  with block 0, so a group gathers whole blocks and attends in one batched call (masked by context length), and
  padding at most doubles the gathered memory;
- for multi-token chunks, one ``PrefillSegment`` each (its packed query range and, when it has earlier context,
  its block table);
- lazily, the varlen view (``cu_seqlens`` and packed context slots) that flash-attn and flex attention take.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(slots=True)
class SeqSpan:
    """One request's share of a step: positions ``[start, start + num_new)`` over block table ``block_ids``
    (which covers at least ``start + num_new`` tokens)."""

    start: int
    num_new: int
    block_ids: list[int]

    @property
    def ctx_len(self) -> int:
        return self.start + self.num_new


@dataclass
class DecodeContext:
    """A decode group's K/V gathered from the cache (``[rows, max_blocks * block_size, kv_heads, head_dim]`` per
    layer), kept from step to step while steady-decode reuse carries the group (same rows, same table width; a
    table only gains the block a row starts, where a masked padding block stood).

    Invariant: before a step, each row's entries below its previous context length equal the cache's; the step
    writes its one new token per row at ``ctx_len - 1`` (in the cache and here), so attending over the buffer
    equals attending over a fresh gather, without the gather."""

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class DecodeGroup:
    row_start: int  # packed rows [row_start, row_end) are this group's decodes
    row_end: int
    blocks: torch.Tensor  # [rows, max_blocks] block tables, padded with block 0 (masked)
    ctx_lens: torch.Tensor  # [rows]
    context: DecodeContext | None = None  # set by the runner when it keeps this group's K/V across steps
    _new_slots: torch.Tensor | None = None

    def context_slots(self, width: int) -> torch.Tensor:
        """``[rows]``: where this step's token of each row lies in a context buffer of ``width`` positions per row,
        flattened to ``[rows * width, ...]``."""
        if self._new_slots is None:
            rows = torch.arange(self.ctx_lens.shape[0], device=self.ctx_lens.device)
            self._new_slots = rows * width + self.ctx_lens - 1
        return self._new_slots


@dataclass
class PrefillSegment:
    q_start: int  # packed row of the first new token
    q_end: int
    start: int  # position of the first new token (tokens before it are already in the cache)
    blocks: torch.Tensor | None  # [blocks] its block table; None when start == 0 (the new K/V is the whole context)

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


@dataclass
class StepMetadata:
    spans: list[SeqSpan]
    block_size: int
    device: torch.device
    dtype: torch.dtype = torch.float32  # of the additive masks (the model's dtype)
    num_tokens: int = 0
    num_decodes: int = 0
    slot_mapping: torch.Tensor | None = None
    decodes: list[DecodeGroup] = field(default_factory=list)
    prefills: list[PrefillSegment] = field(default_factory=list)
    scratch: dict[object, object] = field(default_factory=dict)  # per-step state of the chosen kernel
    _masks: dict[tuple[str, int, int | None], torch.Tensor] = field(default_factory=dict)  # (kind, index, window)
    _varlen: VarlenView | None = None

    @classmethod
    def build(cls, spans: list[SeqSpan], block_size: int, device: torch.device | str,
              dtype: torch.dtype = torch.float32) -> StepMetadata:
        """``spans`` in packed order, decodes (``num_new == 1``) first."""
        device = torch.device(device)
        meta = cls(spans, block_size, device, dtype)
        bs = block_size
        nd = 0
        while nd < len(spans) and spans[nd].num_new == 1:
            nd += 1
        if any(s.num_new <= 1 for s in spans[nd:]):
            raise ValueError("spans must list single-token decodes first and have at least one new token each")
        meta.num_decodes = nd
        slots: list[int] = []
        g0 = 0
        while g0 < nd:
            g1 = g0 + 1
            lo = hi = spans[g0].ctx_len
            while g1 < nd and max(hi, spans[g1].ctx_len) <= 2 * min(lo, spans[g1].ctx_len):
                lo, hi = min(lo, spans[g1].ctx_len), max(hi, spans[g1].ctx_len)
                g1 += 1
            nblk = -(-hi // bs)
            tables, ctx = [], []
            for s in spans[g0:g1]:
                pos = s.start
                slots.append(s.block_ids[pos // bs] * bs + pos % bs)
                table = s.block_ids[:nblk]
                tables.append(table if len(table) == nblk else table + [0] * (nblk - len(table)))
                ctx.append(pos + 1)
            # Through numpy: torch.tensor of a nested list converts element by element (2x slower at 32 rows).
            meta.decodes.append(DecodeGroup(g0, g1, torch.from_numpy(np.array(tables, dtype=np.int64)).to(device),
                                            torch.tensor(ctx, dtype=torch.long, device=device)))
            g0 = g1
        q = nd
        for s in spans[nd:]:
            table = s.block_ids
            p = s.start
            while p < s.ctx_len:  # a block's worth of consecutive slots at a time
                b, off = divmod(p, bs)
                n = min(bs - off, s.ctx_len - p)
                base = table[b] * bs + off
                slots.extend(range(base, base + n))
                p += n
            blocks = None
            if s.start > 0:
                blocks = torch.tensor(table[:-(-s.ctx_len // bs)], dtype=torch.long, device=device)
            meta.prefills.append(PrefillSegment(q, q + s.num_new, s.start, blocks))
            q += s.num_new
        meta.num_tokens = q
        meta.slot_mapping = torch.tensor(slots, dtype=torch.long, device=device)
        return meta

    def decode_mask(self, group: int, window: int | None) -> torch.Tensor:
        """``[rows, 1, 1, max_ctx]`` additive mask (0 or -inf), 0 where a decode of ``group`` attends (its context, within
        ``window``)."""
        key = ("decode", group, window)
        if key not in self._masks:
            g = self.decodes[group]
            ar = torch.arange(g.blocks.shape[1] * self.block_size, device=self.device)[None, :]
            ctx = g.ctx_lens[:, None]
            masked = ar >= ctx
            if window is not None:
                masked |= ar < ctx - window
            # Filled in 2-D, then viewed: half the ops of building the 4-D boolean and inverting it.
            self._masks[key] = self._additive(masked)[:, None, None, :]
        return self._masks[key]

    def prefill_mask(self, index: int, window: int | None) -> torch.Tensor | None:
        """``[q_len, blocks * block_size]`` additive causal mask of prefill ``index`` over its gathered blocks (slots
        past the context are after every query, so causality masks them); None when plain ``is_causal`` is exact
        (no earlier context and no window that bites)."""
        seg = self.prefills[index]
        if seg.start == 0 and (window is None or window >= seg.q_len):
            return None
        key = ("prefill", index, window)
        if key not in self._masks:
            width = seg.blocks.shape[0] * self.block_size if seg.blocks is not None else seg.ctx_len
            if window is None:
                # Every query sees the whole earlier context; only the square of new tokens (plus block padding
                # after it) needs the causal triangle. Cheaper than comparing positions over [q_len, width].
                mask = torch.zeros(seg.q_len, width, dtype=self.dtype, device=self.device)
                mask[:, seg.start:] = torch.full((seg.q_len, width - seg.start), float("-inf"), dtype=self.dtype,
                                                 device=self.device).triu_(1)
            else:
                q_pos = torch.arange(seg.start, seg.ctx_len, device=self.device)[:, None]
                k_pos = torch.arange(width, device=self.device)[None, :]
                mask = self._additive((k_pos > q_pos) | (k_pos <= q_pos - window))
            self._masks[key] = mask
        return self._masks[key]

    def fresh_run(self, index: int, window: int | None) -> int:
        """How many prefills from ``index`` on can attend in one batched causal call: fresh prompts (no earlier
        context) of the same length, for which plain ``is_causal`` is exact. 1 when prefill ``index`` is not one."""
        key = ("fresh_runs", window)
        runs = self.scratch.get(key)
        if runs is None:
            runs = [1] * len(self.prefills)
            j = len(self.prefills) - 2
            while j >= 0:
                a, b = self.prefills[j], self.prefills[j + 1]
                if (a.blocks is None and b.blocks is None and a.q_len == b.q_len
                        and self.prefill_mask(j, window) is None):
                    runs[j] = runs[j + 1] + 1
                j -= 1
            self.scratch[key] = runs
        return runs[index]  # type: ignore[index]

    def _additive(self, masked: torch.Tensor) -> torch.Tensor:
        """0 where attention is allowed, -inf where ``masked``. SDPA turns a bool mask into an additive one on
        every call; built once here, it serves every layer."""
        return torch.zeros(masked.shape, dtype=self.dtype, device=self.device).masked_fill_(masked, float("-inf"))

    def varlen(self) -> VarlenView:
        """The packed view for varlen kernels (built on first use)."""
        if self._varlen is None:
            q_lens = [s.num_new for s in self.spans]
            k_lens = [s.ctx_len for s in self.spans]
            slots = []
            for s in self.spans:
                nblk = -(-s.ctx_len // self.block_size)
                table = torch.tensor(s.block_ids[:nblk], dtype=torch.long)
                ar = torch.arange(s.ctx_len)
                slots.append(table[ar // self.block_size] * self.block_size + ar % self.block_size)
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
