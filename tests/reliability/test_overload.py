"""Work-based shedding: predicted waits from load reports and accounting, and the 503 it raises."""

from __future__ import annotations

import pytest

from foresight.errors import APIError
from gateway.overload import OverloadShedder
from gateway.routing.base import InflightCounts, ReplicaView, RequestView


def req(p50: float = 100.0) -> RequestView:
    return RequestView("r", "m", "chat", "hi", {}, None, 50, p50, 2 * p50)


def replica(rid: str, requests: int, decode_tokens: float, load: dict | None) -> ReplicaView:
    return ReplicaView(rid, "http://x", ("m",), local=InflightCounts(requests, 0.0, decode_tokens), load=load)


def report(running: int, waiting: int, step_ms: float = 10.0) -> dict:
    return {"num_running": running, "num_waiting": waiting, "decode_step_ms": step_ms,
            "prefill_tokens_per_s": 10000.0, "waiting_prompt_tokens": 0}


def test_no_report_or_never_full_means_room() -> None:
    s = OverloadShedder(0.05)
    assert s.check(req(), [replica("a", 50, 5000, None)]) == 0.0
    assert s.check(req(), [replica("a", 3, 300, report(3, 0))]) == 0.0


def test_full_replica_predicts_slot_wait_and_sheds() -> None:
    s = OverloadShedder(0.05)
    full = replica("a", 8, 800.0, report(4, 4))  # runs 4 at a time; 8 in flight, 100 predicted tokens each
    full.load = {**full.load, "kv_blocks_total": 100, "kv_blocks_used": 95, "max_num_seqs": 16}
    wait = s.predicted_wait(req(), full)
    # 5 requests beyond the 4 slots; each slot frees within 100 tokens * 10 ms = 1 s, about every 1/4 s.
    assert wait == pytest.approx(5 * 1.0 / 4)
    with pytest.raises(APIError) as e:
        s.check(req(), [full])
    assert e.value.status == 503 and e.value.code == "overloaded" and e.value.retry_after >= 1
    # A replica with a free slot admits it, and the learned ceiling persists without fresh reports.
    free = replica("b", 2, 200.0, report(2, 0))
    assert s.check(req(), [full, free]) == 0.0
    full.load = None
    assert s.predicted_wait(req(), full) > 0.05


def test_prefill_work_ahead_counts_and_disabled_never_sheds() -> None:
    s = OverloadShedder(0.05)
    r = replica("a", 1, 10.0, {**report(1, 0), "waiting_prompt_tokens": 5000})
    assert s.predicted_wait(req(), r) == pytest.approx(0.5)
    off = OverloadShedder(0.0)
    assert off.check(req(), [r]) is None


def test_declared_max_num_seqs_is_known_before_the_replica_is_ever_full() -> None:
    s = OverloadShedder(0.05)
    r = replica("a", 4, 400.0, {**report(4, 0), "max_num_seqs": 4})
    assert s.ceiling(r) == 4 and s.predicted_wait(req(), r) > 0.05
    # Waiting with a free slot is a scheduler step, not a lower ceiling; with the KV cache full, it is.
    r.load = {**report(3, 2), "max_num_seqs": 4, "kv_blocks_total": 100, "kv_blocks_used": 10}
    assert s.ceiling(r) == 4
    r.load = {**report(3, 2), "max_num_seqs": 4, "kv_blocks_total": 100, "kv_blocks_used": 95}
    assert s.ceiling(r) == 3


def test_admissible_keeps_only_replicas_with_room() -> None:
    s = OverloadShedder(0.05)
    full = replica("a", 4, 400.0, {**report(4, 0), "max_num_seqs": 4})
    free = replica("b", 1, 100.0, {**report(1, 0), "max_num_seqs": 4})
    assert [r.id for r in s.admissible(req(), [full, free])] == ["b"]
    with pytest.raises(APIError):
        s.admissible(req(), [full])
    assert OverloadShedder(0).admissible(req(), [full]) == [full]


def test_gate_filters_for_policies_blind_to_waits_and_only_admits_for_those_that_rank_by_them() -> None:
    s = OverloadShedder(0.05)
    full = replica("a", 4, 400.0, {**report(4, 0), "max_num_seqs": 4})
    free = replica("b", 1, 100.0, {**report(1, 0), "max_num_seqs": 4})
    assert [r.id for r in s.gate(req(), [full, free], ranks_by_wait=False)] == ["b"]
    # foresight weighs the queue against the cached prefix itself: it still sees the replica with a queue.
    assert [r.id for r in s.gate(req(), [full, free], ranks_by_wait=True)] == ["a", "b"]
    for ranks_by_wait in (False, True):  # with no replica admissible both answer 503
        with pytest.raises(APIError):
            s.gate(req(), [full], ranks_by_wait=ranks_by_wait)


def test_policies_declare_whether_they_rank_by_wait() -> None:
    from gateway.routing.base import PolicyContext, create_policy

    ctx = PolicyContext("gw")
    assert create_policy("foresight", ctx).ranks_by_wait
    assert not any(create_policy(n, ctx).ranks_by_wait for n in ("round_robin", "least_load", "prefix"))


@pytest.mark.parametrize(("policy", "candidates"), [("least_load", ["b"]), ("foresight", ["a", "b"])])
def test_the_proxy_leaves_the_choice_to_a_policy_that_ranks_by_wait(policy: str, candidates: list[str]) -> None:
    from gateway.proxy import Proxy, ProxyConfig
    from gateway.registry import Registry
    from gateway.routing.base import PolicyContext, create_policy

    seen: list[list[str]] = []
    impl = create_policy(policy, PolicyContext("gw"))
    rank = impl.rank
    impl.rank = lambda request, replicas: seen.append([r.id for r in replicas]) or rank(request, replicas)
    registry = Registry()
    for rid, running in (("a", 4), ("b", 1)):
        r = registry.add(f"http://{rid}", rid, models=("m",))
        r.set_load({**report(running, 0), "max_num_seqs": 4})
        r.local.requests, r.local.decode_tokens = running, 100.0 * running
    proxy = Proxy(registry, impl, None, None, None, ProxyConfig())  # type: ignore[arg-type]  # rank needs neither
    proxy.shedder = OverloadShedder(0.05)
    proxy.rank(req())
    assert seen == [candidates]
