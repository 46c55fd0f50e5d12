"""Key names in the shared store, relative to the configurable prefix (default ``foresight:``).

Replicas that publish to Redis use the same names (``load:{replica_id}``, ``replica:{replica_id}``), so this module
is the single source of truth for both sides. Index sets (sorted sets scored by expiry time) let a reader list
live entries without SCAN; the per-entry keys carry the real TTL.
"""

from __future__ import annotations

DEFAULT_PREFIX = "foresight:"

INFLIGHT_INDEX = "gateways"  # zset: gateway_id -> expiry (unix seconds)
LOAD_INDEX = "loads"  # zset: replica_id -> expiry
REPLICA_INDEX = "replicas"  # zset: replica_id -> expiry
API_KEYS = "apikeys"  # hash: sha256(key) hex -> JSON {"name", "rate", "burst"}


def inflight(gateway_id: str) -> str:
    """JSON ``{replica_id: {"requests", "prefill_tokens", "decode_tokens"}}`` with a TTL."""
    return f"inflight:{gateway_id}"


def load(replica_id: str) -> str:
    """JSON load report (DESIGN.md section 3) with a TTL of a few seconds."""
    return f"load:{replica_id}"


def replica(replica_id: str) -> str:
    """JSON ``{"replica_id", "url", "models": [...]}`` with a TTL."""
    return f"replica:{replica_id}"


def rate_counter(key_hash: str, window: int) -> str:
    """Float counter of tokens taken from one API key's bucket during one sync window."""
    return f"rl:{key_hash}:{window}"
