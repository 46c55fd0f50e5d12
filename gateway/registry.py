"""The replica registry: which replicas exist, what they serve, whether they may take traffic.

Replicas come from three sources: static ``--replica URL`` flags, self-registration in the state store (refreshed
by ``StateSync``; they vanish when their TTL lapses) and the admin API. A replica's id is the one it registered
under, else ``host:port`` of its URL (stable across gateways configured with the same URLs, which is what makes
the shared in-flight accounting line up). Each replica keeps one ``ReplicaView`` that is updated in place, so
building the candidate list for a request allocates nothing per replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from gateway.breaker import OPEN, CircuitBreaker
from gateway.routing.base import InflightCounts, ReplicaView

log = logging.getLogger(__name__)


def replica_id_from_url(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"replica URL must be http(s)://host:port, got {url!r}")
    return url


class Replica:
    """One upstream. ``view`` is what policies see; ``source`` is ``static``, ``store`` or ``admin``."""

    def __init__(self, replica_id: str, url: str, models: Iterable[str] = (), source: str = "static",
                 breaker: CircuitBreaker | None = None) -> None:
        self.id = replica_id
        self.url = url
        self.source = source
        self.breaker = breaker or CircuitBreaker()
        self.view = ReplicaView(replica_id, url, tuple(models))
        self.load_at = 0.0  # monotonic time of the latest load report
        self.reported_id: str | None = None  # replica_id from its own /load report
        self.probe_failures = 0
        self.last_probe_ok: float | None = None
        self.has_load_endpoint: bool | None = None

    @property
    def local(self) -> InflightCounts:
        return self.view.local

    @property
    def models(self) -> tuple[str, ...]:
        return self.view.models

    @models.setter
    def models(self, value: Iterable[str]) -> None:
        self.view.models = tuple(value)

    def routable(self) -> bool:
        return not self.view.draining and self.breaker.available()

    def set_load(self, report: dict[str, object], at: float | None = None) -> None:
        self.view.load = report
        self.load_at = time.monotonic() if at is None else at
        rid = report.get("replica_id")
        if isinstance(rid, str):
            self.reported_id = rid
        model = report.get("model")
        if isinstance(model, str) and model and model not in self.view.models:
            self.view.models = (*self.view.models, model)

    def expire_load(self, ttl: float, now: float) -> None:
        if self.view.load is not None and now - self.load_at > ttl:
            self.view.load = None

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id, "url": self.url, "models": list(self.models), "source": self.source,
            "breaker": self.breaker.state, "draining": self.view.draining, "routable": self.routable(),
            "inflight": self.local.as_dict(), "remote_inflight": self.view.remote.as_dict(),
            "load": self.view.load, "probe_failures": self.probe_failures,
        }


class Registry:
    """Replicas by id. ``on_change(replica, event)`` hears ``added``, ``removed``, ``ejected``, ``restored``."""

    def __init__(self, on_change: Callable[[Replica, str], None] | None = None,
                 breaker_factory: Callable[[], CircuitBreaker] = CircuitBreaker) -> None:
        self.replicas: dict[str, Replica] = {}
        self.on_change = on_change
        self.breaker_factory = breaker_factory
        self._models_cache: frozenset[str] | None = None

    def _notify(self, replica: Replica, event: str) -> None:
        self._models_cache = None
        if self.on_change is not None:
            self.on_change(replica, event)

    def add(self, url: str, replica_id: str | None = None, models: Iterable[str] = (),
            source: str = "static") -> Replica:
        url = normalise_url(url)
        rid = replica_id or replica_id_from_url(url)
        existing = self.replicas.get(rid)
        if existing is not None:
            existing.url = existing.view.url = url
            if models:
                existing.models = tuple(dict.fromkeys((*existing.models, *models)))
                self._models_cache = None
            return existing
        replica = Replica(rid, url, models, source, self.breaker_factory())

        def breaker_changed(old: str, new: str, r: Replica = replica) -> None:
            r.view.breaker = new
            log.info("replica %s breaker %s -> %s", r.id, old, new)
            self._notify(r, "ejected" if new == OPEN else "restored" if new == "closed" else "half_open")

        replica.breaker.on_change = breaker_changed
        self.replicas[rid] = replica
        self._notify(replica, "added")
        return replica

    def remove(self, replica_id: str) -> Replica | None:
        replica = self.replicas.pop(replica_id, None)
        if replica is not None:
            self._notify(replica, "removed")
        return replica

    def get(self, replica_id: str) -> Replica | None:
        return self.replicas.get(replica_id)

    def find(self, key: str) -> Replica | None:
        """By id, URL or the replica's self-reported id (admin API convenience)."""
        if key in self.replicas:
            return self.replicas[key]
        key = key.rstrip("/")
        for r in self.replicas.values():
            if r.url == key or r.reported_id == key:
                return r
        return None

    def __iter__(self):
        return iter(list(self.replicas.values()))

    def __len__(self) -> int:
        return len(self.replicas)

    def models(self) -> frozenset[str]:
        """Every model served by a known replica (healthy or not)."""
        if self._models_cache is None:
            self._models_cache = frozenset(m for r in self.replicas.values() for m in r.models)
        return self._models_cache

    def models_changed(self) -> None:
        self._models_cache = None

    def serves(self, replica: Replica, model: str) -> bool:
        # A replica whose models are not known yet (no probe answered) may serve anything.
        return not replica.models or model in replica.models
