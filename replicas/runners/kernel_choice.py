"""Choosing the attention kernel when the runner starts, and saying why.

``--attention-kernel NAME`` forces one (``flash_attn`` only where installed and the dtype is fp16/bf16; ``flex``
and ``sdpa`` anywhere). ``auto`` takes the only candidate on CPU (``sdpa``); on CUDA it times every available
kernel on the same synthetic mixed step (32 decodes over 512 tokens of context and one 256-token prefill, scaled
down to fit the pool), drops any whose logits disagree with ``sdpa``'s or that fails, and keeps the fastest.
The report (choice, reason, timings) goes into ``describe()``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from replicas.runners.attn_kernels import AttentionKernel, available_kernels, create_kernel

if TYPE_CHECKING:
    from replicas.runners.torch_runner import TorchRunner

log = logging.getLogger(__name__)
TIMING_REPEATS = 3


def choose_kernel(runner: TorchRunner, requested: str) -> tuple[AttentionKernel, dict[str, object]]:
    available = available_kernels(runner.device, runner.dtype)
    if requested != "auto":
        if requested == "flash_attn" and requested not in available:
            raise ValueError(f"attention kernel flash_attn is not available here (available: {available})")
        return create_kernel(requested, runner.device), {"kernel_choice": "requested", "kernels_available": available}
    if len(available) == 1:
        return create_kernel(available[0], runner.device), {"kernel_choice": "only candidate",
                                                            "kernels_available": available}
    timings, errors = _time_kernels(runner, available)
    if not timings:
        raise RuntimeError(f"no attention kernel works here: {errors}")
    best = min(timings, key=timings.__getitem__)
    log.info("attention kernel timings (ms per synthetic step): %s -> %s", timings, best)
    return create_kernel(best, runner.device), {"kernel_choice": "fastest at start", "kernels_available": available,
                                                "kernel_step_ms": timings, "kernel_errors": errors}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_kernels(runner: TorchRunner, names: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    assert runner.cache is not None
    bs, blocks = runner.cache.layout.block_size, runner.cache.num_blocks
    ctx = min(512, max(bs, (blocks // 4) * bs))
    decodes = max(1, min(32, (blocks - 1) // 2 // max(1, -(-ctx // bs))))
    step = runner.synthetic_step([ctx] * decodes, [min(256, ctx)])
    order = ["sdpa"] + [n for n in names if n != "sdpa"]  # sdpa is the reference the others must agree with
    reference: torch.Tensor | None = None
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in order:
        try:
            runner.kernel = create_kernel(name, runner.device)
            logits = runner.forward_logits(step).float()  # also the warm-up (compilation for flex)
            if reference is None:
                reference = logits
            elif (logits - reference).abs().max() > 0.05 * reference.abs().max() + 1e-3:
                errors[name] = "logits disagree with sdpa"
                continue
            _sync(runner.device)
            t0 = time.perf_counter()
            for _ in range(TIMING_REPEATS):
                runner.forward_logits(step)
            _sync(runner.device)
            timings[name] = round((time.perf_counter() - t0) * 1000 / TIMING_REPEATS, 3)
        except Exception as exc:  # a kernel that cannot run here is skipped, not fatal
            log.warning("attention kernel %s unusable: %r", name, exc)
            errors[name] = repr(exc)
    runner.kernel = None
    return timings, errors
