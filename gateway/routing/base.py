"""The routing policy interface (DESIGN.md section 5) and the data a policy sees.

A policy ranks the candidate replicas for one request, best first, and explains its choice. The gateway calls
``rank`` on the event loop for every request, so it must be fast (no I/O, no awaits; microseconds to a few
milliseconds at 1,024 replicas). The gateway has already filtered the candidates: every replica passed to ``rank``
serves the request's model, is routable (breaker closed or a half-open trial slot is free, not draining) and is under
its admission limit. The gateway tries the ranking in order: the first entry gets the request, later entries are
the retry order when a dispatch fails before its first byte.

Lifecycle, per request (each hook is called at most once per dispatch, always in this order):
``rank`` -> ``on_dispatch(request, replica_id)`` -> ``on_first_token`` (when a first byte came back) ->
``on_complete(request, replica_id, outcome)`` (exactly once per dispatch, also after an error or a client disconnect).
A retried request gets a new ``on_dispatch`` for the next replica after the failed dispatch's ``on_complete``.

Policies with background work (sharing an index through the state store, reading replica KV events) start it in
``start`` and stop it in ``close``; both are awaited once by the gateway around its lifetime.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from gateway.state.base import StateStore


@dataclass(slots=True)
class RequestView:
    """What routing may know about one request. The true output length is never here (DESIGN.md section 5).

    ``prompt_text`` is the whole rendered conversation (every message, roles included; see
    ``gateway.render.render_prompt``), or the prompt of a completion. ``prompt_tokens`` is an estimate (characters
    / 4 unless a tokenizer-aware policy refines it). ``output_p50``/``output_p90`` come from the output-length
    estimator (``gateway.estimator``); they are always set (a fallback estimator exists when the predictor is off).
    """

    request_id: str
    model: str
    route: str  # "chat" or "completions"
    prompt_text: str
    body: Mapping[str, Any]
    session_id: str | None
    prompt_tokens: int
    output_p50: float
    output_p90: float
    max_tokens: int | None = None
    # Free slot for a policy to keep per-request data between rank and the hooks (e.g. the matched prefix length).
    scratch: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InflightCounts:
    """Requests dispatched to a replica and not yet completed, with their expected remaining work (DESIGN.md 4).

    ``prefill_tokens``: uncached prompt tokens of requests that have not produced their first token yet.
    ``decode_tokens``: predicted output tokens (p50) of every in-flight request.
    """

    requests: int = 0
    prefill_tokens: float = 0.0
    decode_tokens: float = 0.0

    def add(self, other: InflightCounts) -> None:
        self.requests += other.requests
        self.prefill_tokens += other.prefill_tokens
        self.decode_tokens += other.decode_tokens

    def as_dict(self) -> dict[str, float]:
        return {"requests": self.requests, "prefill_tokens": self.prefill_tokens, "decode_tokens": self.decode_tokens}


@dataclass(slots=True)
class ReplicaView:
    """One replica as routing sees it.

    ``local``: this gateway's in-flight accounting; ``remote``: the sum over the other gateways (from the state
    store, at most a few hundred milliseconds old; zeros with a single gateway). ``load`` is the replica's latest
    load report (DESIGN.md section 3) when fresher than its TTL, else None. ``breaker`` is ``closed``, ``open`` or
    ``half_open``.
    """

    id: str
    url: str
    models: tuple[str, ...]
    breaker: str = "closed"
    draining: bool = False
    local: InflightCounts = field(default_factory=InflightCounts)
    remote: InflightCounts = field(default_factory=InflightCounts)
    load: Mapping[str, Any] | None = None

    @property
    def inflight(self) -> int:
        """Requests in flight from every gateway."""
        return self.local.requests + self.remote.requests

    @property
    def expected_prefill_tokens(self) -> float:
        return self.local.prefill_tokens + self.remote.prefill_tokens

    @property
    def expected_decode_tokens(self) -> float:
        return self.local.decode_tokens + self.remote.decode_tokens


@dataclass(slots=True)
class Decision:
    """A ranking (replica ids, best first; never empty when there were candidates) and why.

    ``explanation`` maps replica id to its cost terms (e.g. ``{"queue_s": .., "prefill_s": .., "total": ..}``); the
    gateway logs it at DEBUG and returns it in ``X-Foresight-Route`` when the client sent ``X-Foresight-Debug: 1``.
    """

    ranked: list[str]
    explanation: dict[str, dict[str, float]] = field(default_factory=dict)
    reason: str = ""

    def header(self, limit: int = 8) -> str:
        """A compact one-line rendering for a response header (first ``limit`` replicas)."""
        parts = []
        for rid in self.ranked[:limit]:
            terms = self.explanation.get(rid, {})
            parts.append(rid + "(" + ",".join(f"{k}={v:.4g}" for k, v in terms.items()) + ")")
        return (self.reason + ";" if self.reason else "") + " ".join(parts)


@dataclass(slots=True)
class Outcome:
    """How one dispatch ended, for ``on_complete``. ``output_tokens`` is known only after completion."""

    ok: bool
    status: int = 200
    first_token: bool = False
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None


@dataclass(slots=True)
class PolicyContext:
    """What a policy gets at construction.

    ``store``: the gateway's state store (memory or Redis), for sharing an index between gateways through its
    generic key/value, hash and pub/sub methods (never awaited inside ``rank``). ``options``: ``--policy-opt k=v``
    values, strings, for policy-specific knobs. ``block_size``/``hash_seed``: DESIGN.md section 2.
    """

    gateway_id: str
    store: StateStore | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    block_size: int = 16
    hash_seed: str = "foresight"
    key_prefix: str = "foresight:"


class RoutingPolicy(ABC):
    """Base class of every policy; subclasses override ``rank`` and whichever hooks they need."""

    name: ClassVar[str] = "base"
    # True for a policy whose ranking already predicts each replica's wait (DESIGN.md section 5): load shedding
    # then only decides whether the request is admitted and leaves the choice of replica to it, instead of
    # hiding the replicas with a long queue (which may be the ones holding the request's prefix).
    ranks_by_wait: ClassVar[bool] = False

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def rank(self, request: RequestView, replicas: Sequence[ReplicaView]) -> Decision:
        """Rank ``replicas`` (non-empty, all eligible) for ``request``. Pure and fast: no I/O."""

    def admit(self, request: RequestView) -> None:  # noqa: B027 - optional hook
        """Called after ``rank`` for a new request only (never for a retry or a mid-stream continuation, which were
        admitted already): raise ``APIError`` 503 ``overloaded`` to reject it. Default: admit everything."""

    def on_dispatch(self, request: RequestView, replica_id: str) -> None:  # noqa: B027 - optional hook
        """The request was sent to ``replica_id`` (load is counted from now on)."""

    def on_first_token(self, request: RequestView, replica_id: str) -> None:  # noqa: B027 - optional hook
        """The first byte of the response came back from ``replica_id``."""

    def on_complete(self, request: RequestView, replica_id: str, outcome: Outcome) -> None:  # noqa: B027 - optional hook
        """The dispatch ended (success, error or client disconnect). Called exactly once per dispatch."""

    def on_replica_change(self, replica_id: str, event: str) -> None:  # noqa: B027 - optional hook
        """A replica was ``added``, ``removed``, ``ejected`` (breaker opened) or ``restored``; drop or keep its state."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work (e.g. index sharing). Awaited once before the first ``rank``."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work. Awaited once at shutdown."""


# --policy name -> "module:Class" (imported lazily so a broken or heavy policy never slows the others' start).
POLICIES: dict[str, str] = {
    "round_robin": "gateway.routing.round_robin:RoundRobinPolicy",
    "least_load": "gateway.routing.least_load:LeastLoadPolicy",
    "power_of_two": "gateway.routing.power_of_two:PowerOfTwoPolicy",
    "prefix": "gateway.routing.prefix:PrefixPolicy",
    "foresight": "gateway.routing.foresight:ForesightPolicy",
}
DEFAULT_POLICY = "foresight"


def policy_class(name: str) -> type[RoutingPolicy]:
    """The class registered under ``name``; ValueError for an unknown name."""
    try:
        target = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; choose one of {sorted(POLICIES)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def create_policy(name: str, ctx: PolicyContext) -> RoutingPolicy:
    return policy_class(name)(ctx)


def parse_options(items: Sequence[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` (from repeated ``--policy-opt``) to a dict; ValueError on an item without '='."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--policy-opt expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out
