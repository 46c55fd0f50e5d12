"""A transformers causal LM run module by module, without its model-level wrappers.

``LlamaForCausalLM.forward`` (Qwen2's, Qwen3's and Mistral's are alike) spends Python, on every call, on work a
packed step over our paged attention does not use: keyword deprecation and output-capture decorators, building
attention masks that come out None for our attention, slicing the layer list (a new ``ModuleList`` each call) and
two ``ModelOutput`` objects. On a small model that is a tenth of a decode step. ``LayerwiseForward`` calls the
same modules in the same order: embeddings, rotary embeddings, each decoder layer (whose attention is ours),
the final norm and the LM head on the rows that sample.

Contract: built only for the architectures named in ``ARCHITECTURES`` whose modules are where those models keep
them; the runner uses it only after ``matches`` found it bit-identical to the model's own forward on a step, and
calls the model otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

ARCHITECTURES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


class LayerwiseForward:
    def __init__(self, model: Any) -> None:
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.layers = list(inner.layers)[: int(model.config.num_hidden_layers)]
        self.norm = inner.norm
        self.head = model.lm_head

    @classmethod
    def of(cls, model: Any) -> LayerwiseForward | None:
        """The layer-by-layer forward of ``model``, or None when it is not a decoder this module knows."""
        if getattr(model.config, "model_type", None) not in ARCHITECTURES:
            return None
        inner = getattr(model, "model", None)
        needed = ("embed_tokens", "rotary_emb", "layers", "norm")
        if inner is None or not all(hasattr(inner, n) for n in needed) or not hasattr(model, "lm_head"):
            return None
        return cls(model)

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, logits_to_keep: int | torch.Tensor,
                 **kwargs: Any) -> torch.Tensor:
        """``input_ids``/``position_ids`` ``[1, T]`` -> logits ``[1, rows, vocab]``; ``logits_to_keep`` as
        transformers takes it (0: every row; a tensor: those rows). ``kwargs`` go to every attention call."""
        hidden = self.embed(input_ids)
        position_embeddings = self.rotary(hidden, position_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=None, position_embeddings=position_embeddings,
                           position_ids=position_ids, use_cache=False, **kwargs)
        hidden = self.norm(hidden)
        if isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep, :]
        elif logits_to_keep:
            hidden = hidden[:, -logits_to_keep:, :]
        return self.head(hidden)


def matches(model_forward: Callable[[], torch.Tensor], layerwise_forward: Callable[[], torch.Tensor]) -> bool:
    """Whether both forwards of the same step give identical logits (each writes the same K/V to the same slots,
    so running one after the other is harmless)."""
    want, got = model_forward(), layerwise_forward()
    same = want.shape == got.shape and torch.equal(want, got)
    if not same:
        log.warning("layer-by-layer forward differs from the model's own (max |diff| %s): using the model's",
                    (want - got).abs().max().item() if want.shape == got.shape else "shape")
    return same
