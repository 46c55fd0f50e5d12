"""The paged-attention function transformers calls in every attention layer (``attn_implementation=ATTN_NAME``).

A model loaded with ``attn_implementation="foresight_paged"`` calls ``paged_attention_forward`` instead of its
own attention; the runner passes the step's ``PagedStep`` (metadata, KV cache, kernel) as the forward keyword
``foresight_step``, which transformers forwards unchanged to every attention call. Because our name is not
one of transformers' mask functions, the model builds no attention mask of its own (``create_causal_mask``
returns None): causality and request boundaries come from the step metadata alone.

Per layer: write this step's new K/V at ``slot_mapping`` (so a token attends to itself and to its request's
earlier tokens, cached or computed in this same step), then let the kernel attend over the paged context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface

from replicas.runners.attn_kernels import AttentionKernel
from replicas.runners.kv_cache import PagedKVCache
from replicas.runners.step_metadata import StepMetadata

ATTN_NAME = "foresight_paged"
STEP_KWARG = "foresight_step"


@dataclass
class PagedStep:
    meta: StepMetadata
    cache: PagedKVCache
    kernel: AttentionKernel


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """``query`` ``[1, heads, T, D]``, ``key``/``value`` ``[1, kv_heads, T, D]`` (RoPE applied) ->
    ``([1, T, heads, D], None)``, the layout transformers' attention modules expect back."""
    step = kwargs.get(STEP_KWARG)
    if not isinstance(step, PagedStep):
        raise RuntimeError(f"{ATTN_NAME} attention needs the `{STEP_KWARG}` forward keyword (run it through TorchRunner)")
    if query.shape[0] != 1 or query.shape[2] != step.meta.num_tokens:
        raise RuntimeError(f"packed step expected: batch 1 with {step.meta.num_tokens} tokens, got {tuple(query.shape)}")
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise RuntimeError(f"{type(module).__name__} has no layer_idx: cannot address its KV cache")
    step.cache.write(layer, step.meta.slot_mapping, key[0].transpose(0, 1), value[0].transpose(0, 1))
    out = step.kernel.attend(step, layer, query, key, value, scaling, sliding_window)
    return out.unsqueeze(0), None


AttentionInterface.register(ATTN_NAME, paged_attention_forward)
