"""The transformers baselines of ``foresight bench engine``, each timed on the same prompts as our engine.

Every function returns ``(outputs, seconds)``: the generated token ids per prompt and the wall time of the
generation itself (model loading and each contender's one-time warm-up excluded, as for our engine). EOS never
stops generation (``eos_token_id=None``), like ``ignore_eos`` on our side.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `foresight` registers every bench module, and the gateway must not load torch
    import torch


def load(model_dir: str, dtype: torch.dtype, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()


def _generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    return model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                          min_new_tokens=0, eos_token_id=None, pad_token_id=0)


def one_at_a_time(model: Any, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float]:
    """``model.generate`` on each prompt alone, one after the other."""
    import torch

    dev = model.device
    outs = []
    with torch.inference_mode():
        _generate(model, torch.tensor([prompts[0]], device=dev), torch.ones(1, len(prompts[0]), device=dev), 2)
        t0 = time.perf_counter()
        for p in prompts:
            ids = torch.tensor([p], device=dev)
            outs.append(_generate(model, ids, torch.ones_like(ids), new_tokens)[0, len(p):].tolist())
        return outs, time.perf_counter() - t0


def static_batch(model: Any, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float]:
    """One ``model.generate`` call over all prompts, left-padded to the longest."""
    import torch

    dev = model.device
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=dev)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, device=dev)
        mask[i, width - len(p):] = 1
    with torch.inference_mode():
        _generate(model, ids[:2], mask[:2], 2)
        t0 = time.perf_counter()
        gen = _generate(model, ids, mask, new_tokens)
        seconds = time.perf_counter() - t0
    return [row[width:].tolist() for row in gen], seconds


def continuous_batching(model: Any, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float]:
    """transformers' own continuous batching (the manager behind ``generate_batch``): the manager is started and
    warmed up first, then the clock runs from adding the requests to the last one finishing."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    with model.continuous_batching_context_manager(generation_config=config, block=True, timeout=30,
                                                   warmup=True) as manager:
        t0 = time.perf_counter()
        ids = manager.add_requests(inputs=prompts, max_new_tokens=new_tokens)
        results: dict[str, Any] = {}
        while len(results) < len(prompts):
            result = manager.get_result(timeout=5)
            if result is not None and result.is_finished():
                results[result.request_id] = result
            elif result is None and not manager.is_running():
                raise RuntimeError("transformers' continuous batching stopped before finishing")
        seconds = time.perf_counter() - t0
    return [list(results[i].generated_tokens) for i in ids], seconds
