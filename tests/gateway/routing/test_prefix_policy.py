"""The ``prefix`` baseline (SGLang cache_aware) on crafted loads, and the approximate index shared through Redis."""

from __future__ import annotations

import asyncio
from collections import Counter

from gateway.routing.base import InflightCounts, Outcome, PolicyContext, ReplicaView, RequestView, create_policy
from gateway.state.redis import RedisStore

SYSTEM = "".join(f"You are a careful assistant, rule {i:03d}. " for i in range(30))


def req(text: str, rid: str = "q") -> RequestView:
    return RequestView(rid, "m", "completions", text, {}, None, len(text) // 4, 100.0, 200.0)


def views(*loads: int) -> list[ReplicaView]:
    return [ReplicaView(f"r{i}", f"http://r{i}", ("m",), local=InflightCounts(n)) for i, n in enumerate(loads)]


def route(policy, request: RequestView, replicas: list[ReplicaView]) -> str:
    chosen = policy.rank(request, replicas).ranked[0]
    policy.on_dispatch(request, chosen)
    policy.on_complete(request, chosen, Outcome(ok=True, prompt_tokens=request.prompt_tokens))
    return chosen


def test_cache_hit_above_threshold_goes_to_the_holder_even_if_busier() -> None:
    policy = create_policy("prefix", PolicyContext("g"))
    replicas = views(0, 0, 0)
    first = route(policy, req(SYSTEM + "question one"), replicas)
    replicas[int(first[1])].local = InflightCounts(10)  # busier, but within the balance thresholds
    decision = policy.rank(req(SYSTEM + "question two"), replicas)
    assert decision.ranked[0] == first and "cache_hit" in decision.reason
    assert decision.explanation[first]["match"] > 0.9


def test_match_below_threshold_goes_to_the_least_loaded() -> None:
    policy = create_policy("prefix", PolicyContext("g"))
    replicas = views(0, 0, 0)
    first = route(policy, req(SYSTEM[:200] + "x" * 2000), replicas)  # shares under 10% with the next prompt
    replicas[int(first[1])].local = InflightCounts(2)
    decision = policy.rank(req(SYSTEM[:200] + "y" * 2000), replicas)
    assert decision.ranked[0] != first and "cache_miss" in decision.reason


def test_imbalance_overrides_the_cache() -> None:
    policy = create_policy("prefix", PolicyContext("g"))
    replicas = views(0, 0)
    first = route(policy, req(SYSTEM + "a"), replicas)
    other = "r1" if first == "r0" else "r0"
    # 100 vs 10: diff 90 > 64 and 100 > 1.5 * 10: imbalanced, so the least loaded wins despite the cache.
    replicas[int(first[1])].local = InflightCounts(100)
    replicas[int(other[1])].local = InflightCounts(10)
    assert policy.rank(req(SYSTEM + "b"), replicas).ranked[0] == other
    # 70 vs 50: diff 20 <= 64: balanced, the cache wins again.
    replicas[int(first[1])].local = InflightCounts(70)
    replicas[int(other[1])].local = InflightCounts(50)
    assert policy.rank(req(SYSTEM + "c"), replicas).ranked[0] == first


def test_thresholds_are_options() -> None:
    policy = create_policy("prefix", PolicyContext("g", options={"balance_abs_threshold": "2"}))
    replicas = views(0, 0)
    first = route(policy, req(SYSTEM + "a"), replicas)
    replicas[int(first[1])].local = InflightCounts(5)
    assert policy.rank(req(SYSTEM + "b"), replicas).ranked[0] != first


def test_new_prefixes_spread_by_load() -> None:
    policy = create_policy("prefix", PolicyContext("g"))
    replicas = views(0, 0, 0, 0)
    chosen = Counter()
    for i in range(40):
        r = policy.rank(req(f"distinct prompt {i} " * 40), replicas).ranked[0]
        replicas[int(r[1])].local.requests += 1
        chosen[r] += 1
    assert set(chosen.values()) == {10}


async def test_two_gateways_share_the_index_through_redis(redis_url: str) -> None:
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    # The default sharing: a delta leaves ~5 ms after the decision, not on a periodic tick.
    policies = [create_policy("prefix", PolicyContext(f"gw{i}", store=s)) for i, s in enumerate(stores)]
    for p in policies:
        await p.start()
    try:
        replicas = views(0, 0, 0, 0)
        first = route(policies[0], req(SYSTEM + "turn one"), replicas)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + 10
        while policies[1].matcher.shared.applied_remote == 0 and loop.time() < deadline:
            await asyncio.sleep(0.002)
        assert policies[1].matcher.shared.applied_remote > 0
        assert policies[0].matcher.shared.published == 1
        # Gateway 1 never routed this prefix, yet sends the follow-up where gateway 0 sent the first turn.
        decision = policies[1].rank(req(SYSTEM + "turn two"), replicas)
        assert decision.ranked[0] == first and decision.explanation[first]["match"] > 0.9
        # ...and its own decisions flow back to gateway 0.
        second = route(policies[1], req("another conversation " * 40), replicas)
        deadline = loop.time() + 10
        while policies[0].matcher.shared.applied_remote == 0 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        assert policies[0].rank(req("another conversation " * 41), replicas).ranked[0] == second
    finally:
        for p in policies:
            await p.close()
        for s in stores:
            await s.close()


def test_smallest_tree_variant_sends_misses_to_the_emptiest_index() -> None:
    policy = create_policy("prefix", PolicyContext("g", options={"miss_choice": "smallest_tree"}))
    replicas = views(0, 0)
    first = route(policy, req("a" * 4000), replicas)
    other = "r1" if first == "r0" else "r0"
    replicas[int(other[1])].local = InflightCounts(3)  # busier, but it holds nothing
    decision = policy.rank(req("b" * 4000), replicas)
    assert decision.ranked[0] == other and "smallest_tree" in decision.reason


def test_index_follows_device_plus_host_tier_capacity() -> None:
    """A replica with a host KV tier keeps far more prefixes than its device holds: the approximate index of both
    cache-aware policies is sized to the sum."""
    for name in ("prefix", "foresight"):
        policy = create_policy(name, PolicyContext("gw", options={}))
        load = {"block_size": 16, "kv_blocks_total": 100, "kv_host_blocks_total": 300, "ts": 1.0}
        device_only = {"block_size": 16, "kv_blocks_total": 100, "ts": 1.0}
        replicas = [ReplicaView("r0", "http://r0", ("m",), load=load),
                    ReplicaView("r1", "http://r1", ("m",), load=device_only)]
        policy.rank(req(SYSTEM), replicas)
        cap = policy.matcher.index.capacity
        assert cap["r0"] == 4 * cap["r1"] == int(400 * 16 * 4.0 / 128), (name, cap)
