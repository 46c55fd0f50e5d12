"""``foresight`` on crafted cost situations: cache affinity, queueing, KV pressure, rates, near-tie randomisation."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.routing.base import InflightCounts, Outcome, PolicyContext, ReplicaView, RequestView, create_policy

SYSTEM = "".join(f"You are a careful assistant, rule {i:03d}. " for i in range(200))  # ~8k chars, ~2k tokens


def req(text: str, p90: float = 200.0) -> RequestView:
    return RequestView("q", "m", "completions", text, {}, None, len(text) // 4, p90 / 2, p90)


def report(**kw: float) -> dict:
    base = {"block_size": 16, "kv_blocks_total": 10000, "kv_blocks_used": 0, "waiting_prompt_tokens": 0,
            "prefill_tokens_per_s": 10000.0, "decode_step_ms": 20.0, "num_running": 0, "num_waiting": 0}
    return {**base, **kw}


def views(n: int, **kw: float) -> list[ReplicaView]:
    return [ReplicaView(f"r{i}", f"http://r{i}", ("m",), load=report(**kw)) for i in range(n)]


def policy(**opts: str):
    return create_policy("foresight", PolicyContext("g", options={"seed": "1", **opts}))


def warm(p, text: str, replicas: list[ReplicaView], target: str) -> None:
    r = req(text)
    p.rank(r, replicas)
    p.on_dispatch(r, target)
    p.on_complete(r, target, Outcome(ok=True, prompt_tokens=r.prompt_tokens))


def test_prefers_the_replica_holding_the_prefix_and_explains_why() -> None:
    p = policy()
    replicas = views(4)
    warm(p, SYSTEM + "first question", replicas, "r2")
    d = p.rank(req(SYSTEM + "second question"), replicas)
    assert d.ranked[0] == "r2"
    terms = d.explanation["r2"]
    assert set(terms) >= {"queue_s", "prefill_s", "kv_s", "match", "ttft_s"}
    assert terms["prefill_s"] < 0.1 * d.explanation["r0"]["prefill_s"]
    assert "r2(" in d.header()


def test_leaves_the_cached_replica_when_its_queue_costs_more_than_the_prefill() -> None:
    p = policy()
    replicas = views(2)
    warm(p, SYSTEM + "q1", replicas, "r0")
    # r0 holds the prefix (saves ~0.2 s of prefill) but has 30k prompt tokens queued (3 s at 10k tok/s).
    replicas[0].load = report(waiting_prompt_tokens=30000)
    d = p.rank(req(SYSTEM + "q2"), replicas)
    assert d.ranked[0] == "r1"
    assert d.explanation["r0"]["queue_s"] > 2.5


def test_counts_the_gateways_own_dispatches_when_reports_lag() -> None:
    p = policy()
    replicas = views(2)
    replicas[0].local = InflightCounts(3, prefill_tokens=40000.0, decode_tokens=600.0)  # not yet in its report
    assert p.rank(req("fresh prompt " * 400), replicas).ranked[0] == "r1"
    replicas[0].local = InflightCounts()
    replicas[1].remote = InflightCounts(3, prefill_tokens=40000.0, decode_tokens=600.0)  # another gateway's
    assert p.rank(req("fresh prompt " * 400), replicas).ranked[0] == "r0"


def test_kv_pressure_penalty_uses_predicted_output_lengths() -> None:
    p = policy()
    replicas = views(2)
    # r0: KV nearly full of requests predicted to decode for long; r1: more queued prefill but free KV.
    replicas[0].load = report(kv_blocks_used=9900)
    replicas[0].local = InflightCounts(8, 0.0, decode_tokens=8 * 2000.0)
    replicas[1].load = report(waiting_prompt_tokens=4000)
    d = p.rank(req("x " * 4000, p90=500), replicas)
    assert d.explanation["r0"]["kv_s"] > 1.0 and d.ranked[0] == "r1"
    # Without the output estimate and with short predicted decodes the pressure is small and r0 wins again.
    replicas[0].local = InflightCounts(8, 0.0, decode_tokens=8 * 10.0)
    d2 = policy(use_output_estimate="0").rank(req("x " * 4000, p90=500), replicas)
    assert d2.explanation["r0"]["kv_s"] < d.explanation["r0"]["kv_s"] and d2.ranked[0] == "r0"


def test_learns_rates_from_load_reports() -> None:
    p = policy()
    replicas = views(2)
    for i in range(30):  # a new report every time; r0 is a slow replica (e.g. a smaller GPU)
        replicas[0].load = report(prefill_tokens_per_s=2000.0, ts=i)
        replicas[1].load = report(ts=i)
        d = p.rank(req("some prompt " * 300), replicas)
    p.rank(req("some prompt " * 300), replicas)  # the same reports again: digested once, not re-averaged
    assert d.ranked[0] == "r1"
    assert p.rates["r0"].prefill_tps < 2500 and p.rates["r1"].prefill_tps > 9000


def test_near_ties_are_randomised_and_clear_winners_are_not() -> None:
    p = policy()
    replicas = views(4)
    firsts = Counter(p.rank(req("same cost everywhere " * 50), replicas).ranked[0] for _ in range(200))
    assert len(firsts) == 4 and min(firsts.values()) > 20
    replicas[3].load = report(waiting_prompt_tokens=50000)
    ranked = p.rank(req("same cost everywhere " * 50), replicas).ranked
    assert ranked[-1] == "r3" and sorted(ranked) == ["r0", "r1", "r2", "r3"]


def test_sets_the_uncached_prompt_tokens_for_accounting_and_learns_the_token_factor() -> None:
    p = policy()
    replicas = views(2)
    r = req("word " * 800)
    p.rank(r, replicas)
    assert abs(r.scratch["uncached_prompt_tokens"] - r.prompt_tokens) < 1
    for _ in range(100):  # the replicas report half as many prompt tokens as the chars/4 estimate
        p.on_complete(r, "r0", Outcome(ok=True, prompt_tokens=r.prompt_tokens // 2))
    assert 0.45 < p.token_factor < 0.6


def test_full_sequence_slots_cost_a_share_of_the_predicted_decode_time() -> None:
    p = policy()
    replicas = views(2, max_num_seqs=4)
    replicas[0].local = InflightCounts(4, 0.0, decode_tokens=4 * 1000.0)  # every slot taken, long decodes ahead
    replicas[1].load = report(max_num_seqs=4, waiting_prompt_tokens=3000)  # some prefill queued, free slots
    d = p.rank(req("y " * 400), replicas)
    # one slot needed of 4 running: 1/5 of a 1,000-token predicted decode at the learned step time
    assert d.explanation["r0"]["kv_s"] == pytest.approx(1 / 5 * 1000 * p.rates["r0"].decode_step_s)
    assert d.ranked[0] == "r1"


def test_peer_gateways_are_assumed_to_mirror_own_dispatches_until_the_next_sync() -> None:
    p = policy(peer_gateways="3")
    replicas = views(2)
    first = req("a burst of equal-sized work " * 100)
    chosen = p.rank(first, replicas).ranked[0]
    p.on_dispatch(first, chosen)
    d = p.rank(req("another one, the same size " * 100), replicas)  # no shared prefix: the queues decide
    # The gateway's own ticket is not counted here (no gateway in this test): the 3 peers' mirrored dispatches are.
    assert d.ranked[0] != chosen
    assert d.explanation[chosen]["queue_s"] == pytest.approx(3 * first.prompt_tokens / p.rates[chosen].prefill_tps)
    replicas[int(chosen[1])].remote = InflightCounts()  # a state sync: real remote counts replace the guess
    assert p.rank(req("another one, the same size " * 100), replicas).explanation[chosen]["queue_s"] == 0


def test_a_replica_without_a_measured_rate_borrows_the_fleets() -> None:
    p = policy()
    replicas = views(2)
    replicas[0].load = report(prefill_tokens_per_s=30000.0, waiting_prompt_tokens=3000)
    replicas[1].load = report(prefill_tokens_per_s=None, waiting_prompt_tokens=3000)  # idle since it started
    d = p.rank(req("z " * 2000), replicas)
    assert p.rates["r1"].prefill_tps == p.rates["r0"].prefill_tps == 30000.0
    assert d.explanation["r0"]["ttft_s"] == pytest.approx(d.explanation["r1"]["ttft_s"])


def test_an_impossible_prefill_rate_is_capped_at_a_few_times_the_fleets_median() -> None:
    # r3 claims 40x its peers' rate (a measurement bug) and has 60k prompt tokens queued: 0.15 s at its claim,
    # 6 s at its peers' rate. Believed, it would take the request (and soon the fleet's work) and stall.
    def fleet() -> list[ReplicaView]:
        replicas = views(4)
        replicas[3].load = report(prefill_tokens_per_s=400000.0, waiting_prompt_tokens=60000)
        return replicas

    capped = policy().rank(req("z " * 4000), fleet())
    assert capped.ranked[-1] == "r3"
    assert capped.explanation["r3"]["queue_s"] == pytest.approx(60000 / 40000.0)  # 4 x the median, 10k
    believed = policy(rate_spread="0").rank(req("z " * 4000), fleet())
    assert believed.ranked[0] == "r3"
    # Replicas that really differ by less than the spread keep their own rates.
    replicas = views(3)
    replicas[0].load = report(prefill_tokens_per_s=30000.0)
    d = policy().rank(req("z " * 4000), replicas)
    assert d.ranked[0] == "r0" and d.explanation["r0"]["prefill_s"] == pytest.approx(
        d.explanation["r1"]["prefill_s"] / 3)


def test_a_running_long_prefill_delays_a_newcomer_only_by_its_share_of_the_steps() -> None:
    # r0 holds the prefix and is 40k tokens into prefilling a long prompt; it reserves a quarter of each step for
    # admissions, so this mostly cached request is admitted beside it rather than after it.
    replicas = views(2)
    hol = {"long_prefill_tokens": 40000, "max_batched_tokens": 8192}
    replicas[0].load = report(**hol, prefill_reserve=2048)
    p = policy()
    warm(p, SYSTEM + "q1", replicas, "r0")
    replicas[0].local.prefill_tokens = 40000  # this gateway dispatched that long prompt
    d = p.rank(req(SYSTEM + "q2"), replicas)
    assert d.ranked[0] == "r0" and d.explanation["r0"]["queue_s"] < 0.5
    # A replica that does not reserve (another engine, or --prefill-reserve 0) makes it wait for all 40k tokens.
    replicas[0].load = report(**hol, prefill_reserve=0, ts=2.0)
    d = p.rank(req(SYSTEM + "q2"), replicas)
    assert d.ranked[0] == "r1" and d.explanation["r0"]["queue_s"] == pytest.approx(4.0)


def test_the_fleet_work_of_recomputing_a_prefix_keeps_a_close_call_with_the_cache() -> None:
    # r0 holds the ~2k-token prefix (0.2 s of prefill at 10k tok/s) and has 0.3 s more queued than r1: moving wins
    # 0.1 s of TTFT but costs the fleet 0.2 s of prefill work; with the default work weight the request stays.
    replicas = views(2)
    replicas[0].load = report(waiting_prompt_tokens=3000)
    p = policy()
    warm(p, SYSTEM + "q1", replicas, "r0")
    d = p.rank(req(SYSTEM + "q2"), replicas)
    assert d.ranked[0] == "r0" and d.explanation["r1"]["work_s"] == pytest.approx(3 * d.explanation["r1"]["prefill_s"])
    p = policy(work_weight="0")  # TTFT alone
    warm(p, SYSTEM + "q1", replicas, "r0")
    assert p.rank(req(SYSTEM + "q2"), replicas).ranked[0] == "r1"


def test_under_a_fleet_wide_backlog_recomputing_a_prefix_weighs_more() -> None:
    # Both replicas are queued (r1 5 s, r0 6 s); r0 holds the ~2k-token prefix (0.2 s of prefill). Moving to r1
    # wins 0.8 s of TTFT for 0.2 s of work (0.6 s at weight 3): TTFT alone moves it. With the backlog scaling, that
    # work delays every request queued in the fleet for the next 5 s, so it stays with its cache.
    replicas = views(2)
    replicas[0].load = report(waiting_prompt_tokens=60000)
    replicas[1].load = report(waiting_prompt_tokens=50000)
    p = policy(backlog_s="0")
    warm(p, SYSTEM + "q1", replicas, "r0")
    assert p.rank(req(SYSTEM + "q2"), replicas).ranked[0] == "r1"
    p = policy(backlog_s="1")
    warm(p, SYSTEM + "q1", replicas, "r0")
    d = p.rank(req(SYSTEM + "q2"), replicas)
    assert d.ranked[0] == "r0"
    # The scale is 1 + the fleet's shortest wait (r1's 5 s) over backlog_s.
    assert d.explanation["r1"]["work_s"] == pytest.approx(3 * 6 * d.explanation["r1"]["prefill_s"])
    # An idle replica means no backlog: the same queues beside it leave the work term unscaled.
    replicas = [*replicas, views(3)[2]]
    d = p.rank(req(SYSTEM + "q3"), replicas)
    assert d.explanation["r1"]["work_s"] == pytest.approx(3 * d.explanation["r1"]["prefill_s"])


def test_deadline_aware_admission_rejects_only_what_the_queue_would_make_late() -> None:
    from foresight.errors import APIError

    def route(p, r: RequestView, replicas: list[ReplicaView]) -> list[str]:
        ranked = p.rank(r, replicas).ranked  # ranking never raises: a continuation ranks without admission
        p.admit(r)
        return ranked

    long_prompt = "word " * 40_000  # ~50k tokens: 5 s of prefill alone at 10k tok/s
    short = "a short question"
    busy = views(2, waiting_prompt_tokens=40000)  # 4 s of prefill queued on every replica
    idle = views(2)
    assert route(policy(), req(short), busy)  # off by default: everything is routed
    p = policy(reject_ttft="3", reject_min_wait="0.5")
    with pytest.raises(APIError) as e:
        route(p, req(short), busy)
    assert e.value.status == 503 and e.value.code == "overloaded" and e.value.retry_after >= 1
    assert route(p, req(short), idle)
    # A prompt too long for the target even alone is still served while the fleet has no queue...
    assert route(p, req(long_prompt), idle)
    # ...and with reject_min_wait 0 it is rejected: it would miss the target anyway.
    with pytest.raises(APIError):
        route(policy(reject_ttft="3"), req(long_prompt), idle)
