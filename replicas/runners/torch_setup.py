"""Start-up decisions of the torch runner: device, dtype, and how many KV blocks fit.

- dtype ``auto``: float32 on CPU; bfloat16 on CUDA (float16 where the GPU has no bf16).
- CPU KV budget: ``kv_cache_memory`` bytes (default ``DEFAULT_CPU_KV_BYTES``), or exactly ``kv_blocks``.
- CUDA KV budget: measured after a warm-up forward of the largest step: ``gpu_memory_fraction`` of the free
  memory, minus the warm-up's activation peak (steps need it again), minus the transient gathers of the
  attention kernels, which are bounded by twice one layer's share of the cache (every gathered context token
  lives in the pool; decode padding at most doubles it); hence ``kv = budget * L / (L + 2)``. An explicit
  ``kv_blocks`` or ``kv_cache_memory`` that does not fit is refused at start, never discovered as an OOM later.
"""

from __future__ import annotations

import torch

from replicas.runners.kv_cache import KVLayout

DEFAULT_CPU_KV_BYTES = 1 << 30
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
        index = device.index if device.index is not None else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}: use cpu or cuda:N")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: choose auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[name]


def cpu_kv_blocks(layout: KVLayout, kv_blocks: int | None, kv_cache_memory: int | None) -> int:
    if kv_blocks is not None:
        return int(kv_blocks)
    return layout.blocks_for_bytes(kv_cache_memory if kv_cache_memory is not None else DEFAULT_CPU_KV_BYTES)


def cuda_kv_blocks(layout: KVLayout, free_bytes: int, activation_peak: int, fraction: float,
                   kv_blocks: int | None, kv_cache_memory: int | None) -> int:
    """Blocks that fit in ``fraction`` of ``free_bytes`` (measured after warm-up) next to the step's
    activations and attention gathers; raise when an explicit request does not fit."""
    budget = int(free_bytes * fraction) - activation_peak
    usable = budget * layout.num_layers // (layout.num_layers + 2)
    fit = layout.blocks_for_bytes(usable)
    if kv_blocks is not None:
        if kv_blocks > fit:
            raise ValueError(f"kv_blocks={kv_blocks} does not fit: at most {fit} blocks of "
                             f"{layout.bytes_per_block} bytes fit in {usable} usable bytes")
        return int(kv_blocks)
    if kv_cache_memory is not None:
        if kv_cache_memory > usable:
            raise ValueError(f"kv_cache_memory={kv_cache_memory} does not fit: {usable} bytes usable")
        return layout.blocks_for_bytes(kv_cache_memory)
    return fit
