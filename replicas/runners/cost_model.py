"""An analytic cost model of one engine step on a GPU (the simulated runner waits this long).

A step computes, for each scheduled chunk, ``n`` new tokens at positions ``c .. c+n-1`` of its sequence
(``c`` = tokens already in the KV cache). With ``P`` the transformer parameters outside the embeddings:

- FLOPs = sum over chunks of ``2 P n`` (the dense matmuls)
  ``+ 4 L d_attn (n c + n (n+1) / 2)`` (causal attention: QK^T and AV over the context, the quadratic term)
  ``+ 2 h V`` per sampled token (the LM head runs on sampled positions only).
- Bytes = the weights once (``P_all * dtype bytes``) + the KV cache read by attention
  (``kv_bytes_per_token * (c + n)`` per chunk) + the KV written (``kv_bytes_per_token * n``).
- time = ``overhead + max(FLOPs / (peak_flops * mfu), bytes / (bandwidth * mbu))``: a roofline, so a
  prefill-heavy step is compute bound and a decode step memory bound, with sustained (not peak) fractions.
- KV copies to and from the host tier (``transfer_time``) cross the PCIe link and add to the step.

The numbers (peak dense BF16 FLOP/s, HBM bandwidth and size) are the public datasheet values; the sustained
fractions are typical of vLLM-class engines (prefill ~50% of peak, decode ~80% of bandwidth).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class GPUSpec:
    name: str
    peak_flops: float  # dense BF16 FLOP/s
    mem_bandwidth: float  # bytes/s
    mem_bytes: float
    host_link_bandwidth: float = 64e9  # bytes/s one way, PCIe Gen5 x16 (the host-tier KV copies)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    dtype_bytes: int = 2
    tie_embeddings: bool = False

    @property
    def layer_params(self) -> int:
        d, a, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = d * a + 2 * d * kv + a * d
        mlp = 3 * d * self.intermediate_size
        return self.num_layers * (attn + mlp + 2 * d)

    @property
    def total_params(self) -> int:
        emb = self.vocab_size * self.hidden_size
        return self.layer_params + emb * (1 if self.tie_embeddings else 2) + self.hidden_size

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


GPUS = {
    "h100": GPUSpec("H100-SXM-80GB", 989e12, 3.35e12, 80e9),
    "h200": GPUSpec("H200-SXM-141GB", 989e12, 4.8e12, 141e9),
}
MODELS = {
    "llama8b": ModelSpec("Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, 128256, 131072),
    "qwen32b": ModelSpec("Qwen3-32B", 64, 5120, 64, 8, 128, 25600, 151936, 40960),
}


@dataclass(frozen=True)
class CostModel:
    gpu: GPUSpec
    model: ModelSpec
    mfu: float = 0.5  # sustained fraction of peak FLOP/s
    mbu: float = 0.8  # sustained fraction of memory bandwidth
    overhead_s: float = 0.0015  # fixed per-step cost: scheduling, launch, sampling, host work
    link_util: float = 0.8  # sustained fraction of the host link's bandwidth
    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes: float = 2e9

    @property
    def name(self) -> str:
        return f"{self.gpu.name}/{self.model.name}"

    def step_flops(self, chunks: Iterable[tuple[int, int, bool]]) -> float:
        m = self.model
        attn = 4 * m.num_layers * m.num_heads * m.head_dim
        flops = 0.0
        for context, n, sample in chunks:
            flops += 2 * m.layer_params * n + attn * (n * context + n * (n + 1) / 2)
            if sample:
                flops += 2 * m.hidden_size * m.vocab_size
        return flops

    def step_bytes(self, chunks: Iterable[tuple[int, int, bool]]) -> float:
        m = self.model
        kv = sum(m.kv_bytes_per_token * (context + 2 * n) for context, n, _ in chunks)
        return m.total_params * m.dtype_bytes + kv

    def step_time(self, chunks: Iterable[tuple[int, int, bool]]) -> float:
        """Seconds for one step; each chunk is ``(tokens already cached, new tokens, samples)``."""
        chunks = list(chunks)
        if not chunks:
            return 0.0
        compute = self.step_flops(chunks) / (self.gpu.peak_flops * self.mfu)
        memory = self.step_bytes(chunks) / (self.gpu.mem_bandwidth * self.mbu)
        return self.overhead_s + max(compute, memory)

    def transfer_time(self, num_tokens: int) -> float:
        """Seconds to copy the KV of ``num_tokens`` tokens between device and host memory (added to the step,
        not overlapped with it: an upper bound of what an engine that streams loads layer by layer pays)."""
        return num_tokens * self.model.kv_bytes_per_token / (self.gpu.host_link_bandwidth * self.link_util)

    # -- predictions used by benchmarks, tests and load-report priors ---------------------------------
    def prefill_time(self, num_tokens: int, cached: int = 0, chunk: int = 8192) -> float:
        """One request alone: its uncached prompt in steps of at most ``chunk`` tokens (the first token)."""
        t, done = 0.0, cached
        while done < num_tokens:
            n = min(chunk, num_tokens - done)
            t += self.step_time([(done, n, done + n == num_tokens)])
            done += n
        return t

    def decode_step_time(self, batch: int, context: int) -> float:
        """One decode step of ``batch`` sequences of ``context`` tokens each."""
        return self.step_time([(context, 1, True)] * batch)

    def kv_blocks_in(self, nbytes: int, block_size: int) -> int:
        """Whole KV blocks of ``block_size`` tokens that ``nbytes`` of memory hold."""
        return int(nbytes) // (self.model.kv_bytes_per_token * block_size)

    def kv_capacity_tokens(self) -> int:
        budget = self.gpu.mem_bytes * self.gpu_memory_utilization - self.model.total_params * self.model.dtype_bytes
        return max(0, int((budget - self.activation_reserve_bytes) // self.model.kv_bytes_per_token))


def profile(name: str, **overrides: float) -> CostModel:
    """A profile by name: ``<gpu>-<model>``, e.g. ``h100-llama8b``, ``h200-qwen32b``."""
    gpu, _, model = name.partition("-")
    if gpu not in GPUS or model not in MODELS:
        raise ValueError(f"unknown sim profile {name!r}: choose one of {PROFILES}")
    return CostModel(GPUS[gpu], MODELS[model], **overrides)


PROFILES = [f"{g}-{m}" for g in GPUS for m in MODELS]
