"""Unit contracts: breaker, admission, accounting, sticky ring, rate limits, auth, estimator, rendering."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from foresight.errors import APIError
from gateway.accounting import Ticket
from gateway.admission import Admission
from gateway.auth import Auth, digest, parse_keys_file
from gateway.breaker import CircuitBreaker
from gateway.estimator import HistoryEstimator, load_estimator
from gateway.ratelimit import RateLimiter
from gateway.render import render_prompt
from gateway.routing.base import InflightCounts, ReplicaView
from gateway.state.memory import MemoryStore
from gateway.sticky import StickyRing


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_backs_off_and_half_opens_once() -> None:
    clock = Clock()
    changes = []
    b = CircuitBreaker(failure_threshold=2, base_backoff=1.0, max_backoff=4.0, clock=clock,
                       on_change=lambda o, n: changes.append(n))
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open" and not b.available() and not b.acquire()
    clock.t += 1.0
    assert b.acquire() and b.state == "half_open"
    assert not b.acquire()  # one trial only
    b.record_failure()  # the trial failed: open again, for twice as long
    assert b.state == "open"
    clock.t += 1.5
    assert not b.available()
    clock.t += 0.6
    assert b.acquire()
    b.record_success()
    assert b.state == "closed" and b.backoff == 1.0
    assert changes == ["open", "half_open", "open", "half_open", "closed"]


def test_breaker_probe_readmits_only_after_backoff() -> None:
    clock = Clock()
    b = CircuitBreaker(base_backoff=2.0, clock=clock)
    b.trip()
    b.probe_succeeded()
    assert b.state == "open"
    clock.t += 2.0
    b.probe_succeeded()
    assert b.state == "closed"


def test_ticket_releases_exactly_once() -> None:
    counts = InflightCounts()
    freed = []
    t = Ticket(counts, 100.0, 40.0, on_release=lambda: freed.append(1))
    t2 = Ticket(counts, 10.0, 5.0)
    assert counts == InflightCounts(2, 110.0, 45.0)
    t.first_token()
    t.first_token()
    assert counts.prefill_tokens == 10.0
    t.release()
    t.release()
    assert counts == InflightCounts(1, 10.0, 5.0) and freed == [1]
    t2.release()  # released before its first token: prefill goes too
    assert counts == InflightCounts(0, 0.0, 0.0)


async def test_admission_queue_timeout_and_full_queue() -> None:
    adm = Admission(max_inflight=1, queue_size=1, timeout=0.2)
    await adm.acquire(lambda: True)
    waiter = asyncio.create_task(adm.acquire(lambda: True))
    await asyncio.sleep(0.01)
    with pytest.raises(APIError) as full:
        await adm.acquire(lambda: True)
    assert full.value.status == 429 and full.value.headers()["Retry-After"]
    with pytest.raises(APIError) as timeout:
        await waiter
    assert timeout.value.status == 503 and "Retry-After" in timeout.value.headers()
    assert adm.inflight == 1 and adm.waiting == 0


async def test_admission_hands_released_slot_to_waiter_in_order() -> None:
    adm = Admission(max_inflight=1, queue_size=10, timeout=5)
    await adm.acquire(lambda: True)
    order = []

    async def wait(i: int) -> None:
        await adm.acquire(lambda: True)
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    for _ in range(3):
        adm.release()
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and adm.inflight == 1


async def test_admission_waits_for_replica_capacity() -> None:
    room = {"free": False}
    adm = Admission(max_inflight=10, queue_size=10, timeout=5)
    task = asyncio.create_task(adm.acquire(lambda: room["free"]))
    await asyncio.sleep(0.02)
    assert not task.done()
    room["free"] = True
    adm.poke()
    await asyncio.wait_for(task, 1)
    assert adm.inflight == 1


def views(n: int, loads: dict[str, int] | None = None) -> list[ReplicaView]:
    return [ReplicaView(f"r{i}", "", ("m",), local=InflightCounts((loads or {}).get(f"r{i}", 0))) for i in range(n)]


def test_sticky_ring_is_stable_and_bounded() -> None:
    ring = StickyRing(epsilon=0.25)
    vs = views(4)
    ids = [v.id for v in vs]
    picks = {f"s{i}": ring.pick(f"s{i}", vs, ids) for i in range(200)}
    assert all(ring.pick(s, vs, ids) == r for s, r in picks.items())
    assert len(set(picks.values())) == 4
    # Removing one replica moves only its own sessions.
    fewer = [v for v in vs if v.id != "r0"]
    moved = sum(1 for s, r in picks.items() if r != "r0" and ring.pick(s, fewer, ids) != r)
    assert moved == 0
    # An overloaded owner is skipped (bounded load).
    owner = picks["s1"]
    loaded = views(4, {owner: 50})
    assert ring.pick("s1", loaded, ids) != owner


def test_rate_limiter_bucket_and_retry_after() -> None:
    clock = Clock()
    rl = RateLimiter(clock=clock)
    from gateway.auth import KeyInfo

    key = KeyInfo("d" * 64, "k", rate=2.0, burst=2.0)
    rl.take(key)
    rl.take(key)
    with pytest.raises(APIError) as e:
        rl.take(key)
    assert e.value.status == 429 and float(e.value.retry_after) > 0
    clock.t += 0.5
    rl.take(key)
    rl.take(None)  # auth off: unlimited


async def test_rate_limits_are_shared_through_the_store() -> None:
    from gateway.auth import KeyInfo

    store = MemoryStore()
    key = KeyInfo("e" * 64, "k", rate=0.001, burst=10.0)
    a, b = RateLimiter(), RateLimiter()
    for _ in range(8):
        a.take(key)
    b.take(key)
    await a.sync(store)
    await b.sync(store)  # b learns that a took 8
    b.take(key)
    with pytest.raises(APIError):
        b.take(key)


def test_auth_file_hashes_keys_and_checks(tmp_path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# comment\nsk-alpha name=alice rate=5\nsha256:{digest('sk-beta')} name=bob\n")
    keys = parse_keys_file(f)
    assert "sk-alpha" not in str(keys) and digest("sk-alpha") in keys
    auth = Auth(keys, admin_token="adm")
    assert auth.check("Bearer sk-alpha").name == "alice"
    assert auth.check(None, "sk-beta").name == "bob"
    for header, status in ((None, 401), ("Bearer nope", 401), ("Basic sk-alpha", 401)):
        with pytest.raises(APIError) as e:
            auth.check(header)
        assert e.value.status == status
    auth.check_admin("Bearer adm")
    with pytest.raises(APIError) as e:
        auth.check_admin("Bearer wrong")
    assert e.value.status == 403
    with pytest.raises(APIError) as e:
        Auth().check_admin("Bearer adm")
    assert e.value.status == 403
    assert Auth().check(None) is None


def test_history_estimator_learns_and_caps() -> None:
    est = HistoryEstimator(prior_p50=100, prior_p90=400)
    assert est.estimate("m", {}, "", 1).p50 == 100
    assert est.estimate("m", {"max_tokens": 10}, "", 1).p90 == 10
    for n in [20] * 50 + [200] * 10:
        est.observe("m", {}, "", 1, n)
    e = est.estimate("m", {}, "", 1)
    assert e.p50 == 20 and e.p90 == 200
    assert est.estimate("other", {}, "", 1).p50 == 100
    assert isinstance(load_estimator("off"), HistoryEstimator)
    # An unloadable predictor degrades to the fallback instead of failing the gateway.
    assert load_estimator("/nonexistent/predictor.json.gz") is not None


def test_history_estimator_sorts_every_few_observations_once_its_window_is_full(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.estimator as estimator_module

    sorts = []

    def counting_sorted(values):  # noqa: ANN001, ANN202
        sorts.append(1)
        return sorted(values)

    monkeypatch.setattr(estimator_module, "sorted", counting_sorted, raising=False)
    est = HistoryEstimator(window=32)
    for _ in range(64):
        est.observe("m", {}, "", 1, 10)
    sorts.clear()
    for _ in range(400):  # the window stays full: re-sort every 8th observation, not every one
        est.observe("m", {}, "", 1, 500)
    assert len(sorts) == 50
    assert est.estimate("m", {}, "", 1).p50 == 500


def test_render_includes_every_message_and_role() -> None:
    body = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": [
        {"type": "text", "text": "A"}, {"type": "image_url", "image_url": {}}]}]}
    text = render_prompt("chat", body)
    assert "system\nS" in text and "user\nA<image_url>" in text and text.endswith("assistant\n")
    assert render_prompt("completions", {"prompt": ["a", "b"]}) == "a\nb"
    assert render_prompt("completions", {"prompt": [1, 2]}) == "1 2"


def test_round_robin_spreads_evenly() -> None:
    from gateway.routing.base import PolicyContext, RequestView, create_policy

    p = create_policy("round_robin", PolicyContext("g"))
    rv = RequestView("i", "m", "chat", "", {}, None, 1, 1.0, 1.0)
    c = Counter(p.rank(rv, views(3)).ranked[0] for _ in range(30))
    assert set(c.values()) == {10}


def test_request_ids_are_unique_and_differ_between_processes() -> None:
    from gateway.app import RequestIds

    ids, other = RequestIds(), RequestIds()
    seen = {ids() for _ in range(10_000)}
    assert len(seen) == 10_000 and all(len(i) == 32 and int(i, 16) >= 0 for i in seen)
    assert other() not in seen  # another gateway (process) draws another random prefix
