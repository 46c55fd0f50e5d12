"""Attention kernels over the paged KV cache; one is chosen when the runner starts.

Every kernel answers ``attend(step, layer, query, key, value, scaling, window) -> [num_tokens, heads, head_dim]``
for the packed step: ``query`` ``[1, heads, T, D]``, ``key``/``value`` ``[1, kv_heads, T, D]`` (this step's new
tokens, already written to the cache), each request attending causally over its own context only.

- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``; decodes in one batched call per decode group
  over their gathered blocks (padded, masked; a group that keeps a ``DecodeContext`` gathers once and then only
  writes each step's new token into it), a run of equal-length fresh prompts in one batched causal call, every
  other multi-token chunk in its own call (on a CPU, a chunk after earlier context as two calls merged by
  log-sum-exp: ``_context_then_causal``). Works on CPU and CUDA.
- ``flash_attn``: ``flash_attn_varlen_func`` over the packed queries and gathered packed contexts, one call per
  layer (CUDA, fp16/bf16, when the ``flash-attn`` package is installed). Its causal mask is bottom-right aligned,
  which is what a chunk with earlier context needs.
- ``flex``: ``torch.nn.attention.flex_attention`` with a per-step block mask (same sequence, key position <=
  query position); compiled on CUDA, eager elsewhere (tests check it against ``sdpa`` on CPU).
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from replicas.runners.paged_attention import PagedStep
    from replicas.runners.step_metadata import DecodeGroup, PrefillSegment


def _fold_run(t: torch.Tensor, start: int, run: int, length: int) -> torch.Tensor:
    """Packed rows ``[start, start + run * length)`` of ``t`` ``[1, h, T, D]`` as a batch ``[run, h, length, D]``."""
    return t[0, :, start:start + run * length, :].unflatten(1, (run, length)).transpose(0, 1)


def _decode_context(step: PagedStep, layer: int, group: DecodeGroup, key: torch.Tensor,
                    value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V over ``group``'s block tables: gathered from the cache, or, when the group keeps a
    ``DecodeContext`` that an earlier step filled, that buffer with this step's tokens written in."""
    ctx = group.context
    if ctx is None or layer not in ctx.keys:
        k, v = step.cache.gather_blocks(layer, group.blocks)
        if ctx is not None:
            ctx.keys[layer], ctx.values[layer] = k, v
        return k, v
    k, v = ctx.keys[layer], ctx.values[layer]
    slots = group.context_slots(k.shape[1])
    rows = slice(group.row_start, group.row_end)
    k.flatten(0, 1).index_copy_(0, slots, key[0, :, rows, :].transpose(0, 1))
    v.flatten(0, 1).index_copy_(0, slots, value[0, :, rows, :].transpose(0, 1))
    return k, v


class AttentionKernel(ABC):
    name: str = "base"

    @abstractmethod
    def attend(self, step: PagedStep, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None, window: int | None) -> torch.Tensor: ...


class SdpaKernel(AttentionKernel):
    name = "sdpa"

    def __init__(self) -> None:
        # On a CPU, SDPA that also returns the log-sum-exp (a private aten op; absent, chunks take the masked path).
        self._lse = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)

    def _context_then_causal(self, step: PagedStep, layer: int, seg: PrefillSegment, q: torch.Tensor,
                             key: torch.Tensor, value: torch.Tensor, scaling: float | None) -> torch.Tensor:
        """A chunk after earlier context, as two attentions merged by their log-sum-exps: over the earlier
        context, which every query sees (no mask), and causal over the chunk's own new tokens (a square, so plain
        ``is_causal`` is exact). Same result as one call over the whole context with a mask, without building,
        reading or computing the masked part: ~40% less time for a 2,048-token chunk after 2,048 tokens."""
        bs = step.cache.layout.block_size
        kg, vg = step.cache.gather_blocks(layer, seg.blocks[: -(-seg.start // bs)])  # [blocks * bs, kv, D]
        kc, vc = (t[: seg.start].transpose(0, 1).unsqueeze(0) for t in (kg, vg))
        kn, vn = key[:, :, seg.q_start:seg.q_end, :], value[:, :, seg.q_start:seg.q_end, :]
        o1, lse1 = self._lse(q, kc, vc, 0.0, False, scale=scaling)
        o2, lse2 = self._lse(q, kn, vn, 0.0, True, scale=scaling)
        top = torch.maximum(lse1, lse2)
        w1, w2 = (lse1 - top).exp_(), (lse2 - top).exp_()
        total = w1 + w2
        return (o1 * (w1 / total).unsqueeze(-1) + o2 * (w2 / total).unsqueeze(-1)).to(q.dtype)

    def attend(self, step: PagedStep, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None, window: int | None) -> torch.Tensor:
        meta, cache = step.meta, step.cache
        outs: list[torch.Tensor] = []
        heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[3]
        for g, group in enumerate(meta.decodes):
            rows = group.row_end - group.row_start
            # One query per row: fold each KV head's query heads into the query length ([rows, kv, H/kv, D]),
            # an exact rewrite of GQA that spares SDPA its per-head broadcast of K and V.
            q = query[0, :, group.row_start:group.row_end, :].transpose(0, 1).reshape(rows, kv_heads, -1, dim)
            k, v = _decode_context(step, layer, group, key, value)  # [rows, blocks * bs, kv, D]
            o = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=meta.decode_mask(g, window), scale=scaling)
            outs.append(o.reshape(rows, heads, dim))
        i = 0
        while i < len(meta.prefills):
            seg = meta.prefills[i]
            run = meta.fresh_run(i, window)
            if run > 1:  # equal-length prompts without earlier context: one batched causal call
                q, k, v = (_fold_run(t, seg.q_start, run, seg.q_len) for t in (query, key, value))
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
                outs.append(o.transpose(1, 2).reshape(run * seg.q_len, heads, dim))
                i += run
                continue
            q = query[:, :, seg.q_start:seg.q_end, :]
            if seg.blocks is not None and window is None and self._lse is not None and q.device.type == "cpu":
                o = self._context_then_causal(step, layer, seg, q, key, value, scaling)
                outs.append(o[0].transpose(0, 1))
                i += 1
                continue
            if seg.blocks is None:
                k = key[:, :, seg.q_start:seg.q_end, :]
                v = value[:, :, seg.q_start:seg.q_end, :]
            else:
                kg, vg = cache.gather_blocks(layer, seg.blocks)  # [blocks * bs, kv, D]
                k, v = kg.transpose(0, 1).unsqueeze(0), vg.transpose(0, 1).unsqueeze(0)
            mask = meta.prefill_mask(i, window)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling,
                                               enable_gqa=True)
            outs.append(o[0].transpose(0, 1))  # [q_len, H, D]
            i += 1
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


class FlashAttnKernel(AttentionKernel):
    name = "flash_attn"

    def __init__(self) -> None:
        from flash_attn import flash_attn_varlen_func

        self._fn = flash_attn_varlen_func

    def attend(self, step: PagedStep, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None, window: int | None) -> torch.Tensor:
        vl = step.meta.varlen()
        k, v = step.cache.gather(layer, vl.k_slots)  # [total_k, kv, D]
        q = query[0].transpose(0, 1)  # [T, H, D]
        # HF's sliding window keeps keys with k_pos > q_pos - window: `window - 1` keys to the left.
        win = (window - 1, 0) if window is not None else (-1, -1)
        return self._fn(q.contiguous(), k, v, vl.cu_q, vl.cu_k, vl.max_q, vl.max_k, softmax_scale=scaling,
                        causal=True, window_size=win)


class FlexKernel(AttentionKernel):
    """Packed queries over packed gathered contexts; rows padded to multiples of ``pad`` so that the compiled
    kernel sees few distinct shapes. Padded rows belong to no sequence: fully masked, their output is dropped."""

    name = "flex"

    def __init__(self, compile: bool, pad: int = 128) -> None:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self._create_block_mask = create_block_mask
        self._flex = torch.compile(flex_attention, dynamic=True) if compile else flex_attention
        self._compile = compile  # also for the block mask: uncompiled, it materialises the whole [T, K] mask
        self._pad = pad

    def _padded(self, n: int) -> int:
        return -(-n // self._pad) * self._pad

    def _block_mask(self, step: PagedStep, window: int | None) -> object:
        key = ("flex_mask", window)
        if key not in step.meta.scratch:
            vl = step.meta.varlen()
            t, k = int(vl.q_pos.shape[0]), int(vl.k_pos.shape[0])
            tp, kp = self._padded(t), self._padded(k)
            dev = vl.q_pos.device
            q_seq = torch.full((tp,), -1, dtype=torch.long, device=dev)
            k_seq = torch.full((kp,), -2, dtype=torch.long, device=dev)
            q_seq[:t], k_seq[:k] = vl.q_seq, vl.k_seq
            q_pos = torch.zeros(tp, dtype=torch.long, device=dev)
            k_pos = torch.zeros(kp, dtype=torch.long, device=dev)
            q_pos[:t], k_pos[:k] = vl.q_pos, vl.k_pos

            def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202 - flex's callback signature
                ok = (q_seq[q_idx] == k_seq[kv_idx]) & (k_pos[kv_idx] <= q_pos[q_idx])
                if window is not None:
                    ok = ok & (k_pos[kv_idx] > q_pos[q_idx] - window)
                return ok

            step.meta.scratch[key] = self._create_block_mask(mask_mod, None, None, tp, kp, device=dev,
                                                             _compile=self._compile)
        return step.meta.scratch[key]

    def attend(self, step: PagedStep, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None, window: int | None) -> torch.Tensor:
        vl = step.meta.varlen()
        block_mask = self._block_mask(step, window)
        t, kn = query.shape[2], int(vl.k_slots.shape[0])
        tp, kp = self._padded(t), self._padded(kn)
        kg, vg = step.cache.gather(layer, vl.k_slots)  # [total_k, kv, D]
        q = F.pad(query, (0, 0, 0, tp - t))
        k = F.pad(kg.transpose(0, 1).unsqueeze(0), (0, 0, 0, kp - kn))
        v = F.pad(vg.transpose(0, 1).unsqueeze(0), (0, 0, 0, kp - kn))
        out = self._flex(q, k, v, block_mask=block_mask, scale=scaling, enable_gqa=True)
        return out[0, :, :t, :].transpose(0, 1)


def available_kernels(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Kernels that can run here, in the order ``auto`` prefers them."""
    names = []
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and importlib.util.find_spec("flash_attn"):
        names.append("flash_attn")
    if device.type == "cuda" and importlib.util.find_spec("torch.nn.attention.flex_attention"):
        names.append("flex")
    names.append("sdpa")
    return names


def create_kernel(name: str, device: torch.device) -> AttentionKernel:
    if name == "sdpa":
        return SdpaKernel()
    if name == "flash_attn":
        return FlashAttnKernel()
    if name == "flex":
        return FlexKernel(compile=device.type == "cuda")
    raise ValueError(f"unknown attention kernel {name!r}: choose auto, sdpa, flex or flash_attn")
