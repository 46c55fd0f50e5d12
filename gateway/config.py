"""Gateway settings; ``gateway.cli`` maps every field to a ``--flag`` (and so to ``FORESIGHT_*`` and YAML)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from foresight.hashing import DEFAULT_BLOCK_SIZE, DEFAULT_HASH_SEED
from gateway.reliability import ReliabilityConfig
from gateway.routing.base import DEFAULT_POLICY


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: list[str] = field(default_factory=list)
    policy: str = DEFAULT_POLICY
    policy_opts: dict[str, str] = field(default_factory=dict)
    redis: str | None = None
    key_prefix: str = "foresight:"
    gateway_id: str = field(default_factory=lambda: "gw-" + uuid.uuid4().hex[:8])
    predictor: str = "default"
    api_keys: str | None = None
    admin_token: str | None = None
    upstream_api_key: str | None = None
    # Limits
    max_body_bytes: int = 4 * 1024 * 1024
    max_tokens_limit: int = 131_072
    max_inflight: int = 4096
    max_inflight_per_replica: int = 512
    queue_size: int = 1024
    queue_timeout: float = 10.0
    # Upstream calls and retries
    max_attempts: int = 3
    retry_deadline: float = 30.0
    connect_timeout: float = 2.0
    read_timeout: float = 600.0
    # Health
    probe_interval: float = 0.5
    probe_timeout: float = 1.0
    load_ttl: float = 3.0
    breaker_threshold: int = 3
    breaker_backoff: float = 1.0
    breaker_max_backoff: float = 30.0
    # Shared state
    sync_interval: float = 0.1
    inflight_push_interval: float = 0.01  # with Redis: push own in-flight counts on change (0: poll only)
    state_ttl: float = 2.0
    # Routing
    block_size: int = DEFAULT_BLOCK_SIZE
    hash_seed: str = DEFAULT_HASH_SEED
    sticky_epsilon: float = 0.25
    access_log: bool = False
    # Hardening, shedding, mid-stream continuation (gateway/reliability.py)
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)
