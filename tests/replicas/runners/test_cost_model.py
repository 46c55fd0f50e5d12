"""The analytic cost model: roofline regimes, the attention quadratic term, profiles."""

from __future__ import annotations

import pytest

from replicas.runners.cost_model import PROFILES, profile


def test_profiles_exist_and_models_have_their_published_size() -> None:
    assert {"h100-llama8b", "h200-llama8b", "h100-qwen32b", "h200-qwen32b"} <= set(PROFILES)
    assert profile("h100-llama8b").model.total_params == pytest.approx(8.03e9, rel=0.01)
    assert profile("h100-qwen32b").model.total_params == pytest.approx(32.8e9, rel=0.01)
    with pytest.raises(ValueError, match="unknown sim profile"):
        profile("a100-gpt5")


def test_decode_is_memory_bound_and_prefill_compute_bound() -> None:
    c = profile("h100-llama8b")
    decode = [(1000, 1, True)]
    prefill = [(0, 4096, True)]
    assert c.step_bytes(decode) / (c.gpu.mem_bandwidth * c.mbu) > c.step_flops(decode) / (c.gpu.peak_flops * c.mfu)
    assert c.step_flops(prefill) / (c.gpu.peak_flops * c.mfu) > c.step_bytes(prefill) / (c.gpu.mem_bandwidth * c.mbu)
    # Batch-1 decode reads the weights once: about 16 GB at 80% of 3.35 TB/s plus the step overhead.
    assert c.decode_step_time(1, 1000) == pytest.approx(16.06e9 / (3.35e12 * 0.8) + c.overhead_s, rel=0.02)


def test_attention_makes_prefill_superlinear_and_h200_decodes_faster() -> None:
    c = profile("h100-llama8b")
    assert c.prefill_time(16000) / c.prefill_time(1000) > 16.0
    assert profile("h200-llama8b").decode_step_time(32, 2000) < c.decode_step_time(32, 2000)


def test_cached_prefix_cuts_prefill_in_proportion() -> None:
    c = profile("h100-qwen32b")
    full, hit = c.prefill_time(4000), c.prefill_time(4000, cached=3984)
    assert hit < full / 10
    assert c.prefill_time(4000, cached=2000) < 0.6 * full


def test_kv_capacity_follows_memory() -> None:
    assert profile("h200-qwen32b").kv_capacity_tokens() > 5 * profile("h100-qwen32b").kv_capacity_tokens() > 0


def test_host_transfer_is_linear_and_far_cheaper_than_recomputing() -> None:
    c = profile("h100-llama8b")
    assert c.transfer_time(2048) == pytest.approx(2 * c.transfer_time(1024))
    # Loading 8k tokens of prefix back over PCIe must beat prefilling them several times over: the tier's point.
    assert c.prefill_time(8192) > 5 * c.transfer_time(8192)
