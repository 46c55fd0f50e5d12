"""Configuration of one replica: engine limits, runner choice, and where it publishes its state.

Every field maps to a `foresight replica` flag (``replicas/cli.py``); tests and other components build a
``ReplicaConfig`` directly. ``None`` means "derive it": ``max_model_len`` from the simulated profile or the
model config, ``kv_blocks`` from the runner's memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from foresight.hashing import DEFAULT_BLOCK_SIZE, DEFAULT_HASH_SEED


@dataclass
class ReplicaConfig:
    model: str = "tiny"  # a name (`tiny`, `smollm2`) or a model folder, resolved by replicas.models
    served_model_name: str | None = None  # the id in /v1/models; default: replicas.models.served_name(model)
    runner: str = "sim"  # a key of replicas.runners.registry.RUNNERS
    device: str = "cpu"  # torch runner only: `cpu`, `cuda:N`
    dtype: str = "auto"  # torch runner only: `auto`, `float32`, `bfloat16`, `float16`
    block_size: int = DEFAULT_BLOCK_SIZE
    max_num_seqs: int = 256  # running requests at most
    max_batched_tokens: int = 8192  # tokens scheduled in one step at most (chunked prefill splits beyond)
    max_model_len: int | None = None  # prompt + output tokens at most
    max_waiting: int = 1024  # queued requests at most; beyond, the server answers 503 with Retry-After
    priority_max_wait_s: float = 30.0  # a request queued this long goes before any with a lower priority
    prefill_reserve: int | None = None  # step budget a running prefill leaves to admissions (None: a quarter)
    decode_step_tokens: int | None = None  # step budget while requests decode (None: a quarter of the budget)
    kv_blocks: int | None = None  # override the KV pool size in blocks
    kv_cache_memory: int | None = None  # bytes of KV memory (used when kv_blocks is None)
    host_kv_memory: int = 0  # bytes of host RAM for the second KV tier (evicted prefixes; 0: no tier)
    sim_profile: str = "h100-llama8b"  # sim runner: GPU + model profile of the cost model
    sim_output_mean: float = 256.0  # sim runner: mean output length (tokens) when nothing forces it
    sim_output_sigma: float = 0.8  # sim runner: log-normal sigma of that length
    sim_seed: int = 0  # sim runner: base seed of simulated sampling
    hash_seed: str = DEFAULT_HASH_SEED  # DESIGN.md section 2 root seed; must match the gateway's
    replica_id: str = "r0"
    host: str = "127.0.0.1"
    port: int = 8100
    url: str | None = None  # the address others reach this replica at; default http://host:port
    redis_url: str | None = None  # publish KV events and load reports there when set
    key_prefix: str = "foresight:"
    load_interval_s: float = 0.1  # load report period (DESIGN.md section 3)
    load_ttl_s: float = 3.0  # TTL of the published load report
    max_body_bytes: int = 32 * 1024 * 1024  # larger request bodies get 413
    extra: dict[str, object] = field(default_factory=dict)  # runner-specific options

    @property
    def public_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"

    @property
    def model_name(self) -> str:
        from replicas.models import served_name

        return self.served_model_name or served_name(self.model)

    def validate(self) -> None:
        """Raise ValueError on limits that cannot work together."""
        if self.block_size <= 0:
            raise ValueError("block_size must be positive")
        if self.max_num_seqs <= 0 or self.max_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_batched_tokens must be positive")
        if self.max_model_len is not None and self.max_model_len <= 1:
            raise ValueError("max_model_len must be at least 2")
        if self.prefill_reserve is not None and not 0 <= self.prefill_reserve < self.max_batched_tokens:
            raise ValueError("prefill_reserve must be at least 0 and below max_batched_tokens")
        if self.decode_step_tokens is not None and self.decode_step_tokens <= 0:
            raise ValueError("decode_step_tokens must be positive")
        if self.host_kv_memory < 0:
            raise ValueError("host_kv_memory must be zero or positive")
        if self.kv_blocks is not None and self.kv_blocks <= 0:
            raise ValueError("kv_blocks must be positive")
