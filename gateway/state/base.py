"""The state store interface: what gateways (and replicas) share, in memory or in Redis (DESIGN.md sections 1, 3, 4).

Contract:
- Every method is a coroutine and may raise ``StoreUnavailable`` (Redis down). The gateway calls them only from
  background tasks (``gateway.state.sync.StateSync``), never on a request's path; the request path reads the sync
  task's local snapshot, so a slow or dead Redis never delays a request.
- Every liveness entry carries a TTL: a gateway's in-flight accounting, a replica's load report and registration
  disappear by themselves when their writer stops refreshing them.
- Keys start with ``key_prefix`` (default ``foresight:``); ``gateway.state.keys`` names them, so that replicas
  publishing their load report or registration write exactly what gateways read.
- The generic methods (``kv_*``, ``hash_*``, ``incr``, ``publish``/``subscribe``) take keys and channels relative to
  the prefix; they serve features that share small state between gateways (the approximate prefix index deltas,
  API keys, rate-limit counters).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from gateway.routing.base import InflightCounts


class StoreUnavailable(Exception):
    """The backing store cannot be reached right now; callers keep their local view and retry later."""


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A replica registration: where it is and what it serves."""

    replica_id: str
    url: str
    models: tuple[str, ...] = ()


class Subscription(ABC):
    """Messages of one pub/sub channel, in publish order; ``close()`` unsubscribes. At-most-once delivery."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def close(self) -> None: ...


class StateStore(ABC):
    """Shared state; see the module docstring for the contract."""

    name: str = "base"

    def __init__(self, key_prefix: str = "foresight:") -> None:
        self.key_prefix = key_prefix

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (lazily; a store that cannot connect yet still starts and raises StoreUnavailable per call)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    async def ping(self) -> bool:
        """True when the store answers."""

    # -- in-flight accounting per gateway (DESIGN.md section 4)
    @abstractmethod
    async def put_inflight(self, gateway_id: str, counts: Mapping[str, InflightCounts], ttl: float) -> None:
        """Replace this gateway's per-replica accounting; it expires after ``ttl`` seconds unless refreshed."""

    @abstractmethod
    async def get_inflight(self) -> dict[str, dict[str, InflightCounts]]:
        """Live accounting of every gateway: ``{gateway_id: {replica_id: counts}}``."""

    # -- replica load reports (DESIGN.md section 3)
    @abstractmethod
    async def put_load_report(self, replica_id: str, report: Mapping[str, object], ttl: float) -> None: ...

    @abstractmethod
    async def get_load_reports(self) -> dict[str, dict[str, object]]:
        """Unexpired load reports of every replica that published one: ``{replica_id: report}``."""

    # -- replica registration
    @abstractmethod
    async def register_replica(self, info: ReplicaInfo, ttl: float) -> None:
        """Announce (or refresh) a replica; it disappears ``ttl`` seconds after its last refresh."""

    @abstractmethod
    async def deregister_replica(self, replica_id: str) -> None: ...

    @abstractmethod
    async def list_replicas(self) -> list[ReplicaInfo]: ...

    # -- generic small shared state (keys relative to the prefix)
    @abstractmethod
    async def kv_set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    @abstractmethod
    async def kv_get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def kv_delete(self, key: str) -> None: ...

    @abstractmethod
    async def hash_set(self, key: str, mapping: Mapping[str, bytes], ttl: float | None = None) -> None:
        """Set fields of a hash; ``ttl`` (when given) applies to the whole hash and is refreshed by each call."""

    @abstractmethod
    async def hash_get_all(self, key: str) -> dict[str, bytes]: ...

    @abstractmethod
    async def hash_delete(self, key: str, *fields: str) -> None: ...

    @abstractmethod
    async def incr(self, key: str, amount: float, ttl: float | None = None) -> float:
        """Atomically add ``amount`` to a float counter and return the new total (used by shared rate limits)."""

    @abstractmethod
    async def publish(self, channel: str, message: bytes) -> None: ...

    @abstractmethod
    async def subscribe(self, channel: str) -> Subscription: ...
