"""round_robin, least_load and power_of_two rank correctly, and the registry resolves every name."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.routing.base import (
    POLICIES,
    Decision,
    InflightCounts,
    PolicyContext,
    ReplicaView,
    RequestView,
    create_policy,
    parse_options,
    policy_class,
)


def req() -> RequestView:
    return RequestView("id", "m", "chat", "hello", {}, None, 2, 10.0, 20.0)


def views(*loads: int) -> list[ReplicaView]:
    return [ReplicaView(f"r{i}", f"http://r{i}", ("m",), local=InflightCounts(n)) for i, n in enumerate(loads)]


CTX = PolicyContext(gateway_id="g")


def test_round_robin_cycles_and_returns_full_retry_order() -> None:
    policy = create_policy("round_robin", CTX)
    firsts = [policy.rank(req(), views(0, 0, 0)).ranked for _ in range(6)]
    assert [f[0] for f in firsts] == ["r0", "r1", "r2", "r0", "r1", "r2"]
    assert all(sorted(f) == ["r0", "r1", "r2"] for f in firsts)


def test_least_load_prefers_fewest_and_counts_remote_and_reports() -> None:
    policy = create_policy("least_load", CTX)
    replicas = views(3, 1, 2)
    assert policy.rank(req(), replicas).ranked == ["r1", "r2", "r0"]
    replicas[1].remote = InflightCounts(5)  # another gateway loads r1
    assert policy.rank(req(), replicas).ranked[0] == "r2"
    replicas[2].load = {"num_running": 9, "num_waiting": 1}  # the replica says it is busier than we know
    assert policy.rank(req(), replicas).ranked[0] == "r0"


def test_least_load_breaks_ties_at_random() -> None:
    policy = create_policy("least_load", CTX)
    firsts = Counter(policy.rank(req(), views(0, 0, 5)).ranked[0] for _ in range(200))
    assert set(firsts) == {"r0", "r1"}


def test_power_of_two_never_picks_the_worse_of_its_pair() -> None:
    policy = create_policy("power_of_two", CTX)
    counts = Counter(policy.rank(req(), views(0, 10, 10, 10)).ranked[0] for _ in range(300))
    # r0 wins every duel it is in (half of all pairs); the loaded ones only win against each other.
    assert counts["r0"] > 100
    assert policy.rank(req(), views(4)).ranked == ["r0"]
    assert len(policy.rank(req(), views(1, 2, 3, 4, 5)).ranked) == 5


def test_registry_and_options() -> None:
    assert {"round_robin", "least_load", "power_of_two", "prefix", "foresight"} <= set(POLICIES)
    assert policy_class("least_load").name == "least_load"
    with pytest.raises(ValueError, match="unknown routing policy"):
        policy_class("nope")
    assert parse_options(["a=1", " b = x "]) == {"a": "1", "b": "x"}
    with pytest.raises(ValueError):
        parse_options(["novalue"])


def test_decision_header_is_compact() -> None:
    d = Decision(["a", "b"], {"a": {"cost": 1.23456}, "b": {}}, reason="x")
    assert d.header() == "x;a(cost=1.235) b()"
