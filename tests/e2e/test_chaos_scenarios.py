"""Short versions of every ``foresight bench chaos`` scenario, with real processes (replicas, gateways, Redis).

Timing goals (ejection within 1 s, rejections within 10 ms, TTFT ratios) are measured by the full runs in
``bench/results/``; on a shared 2-core machine these tests assert only what must hold however slow it is.
"""

from __future__ import annotations

import pytest

from bench.chaos import run_scenario

pytestmark = pytest.mark.slow


def test_replica_kill_loses_nothing() -> None:
    r = run_scenario("replica-kill", quick=True)
    assert r["load"]["requests"] > 0
    assert r["failed_not_streaming"] == 0
    assert r["streams_in_flight_on_killed"] >= 1  # the busiest replica was killed mid-stream
    assert r["streams_continued_ok"] == r["streams_in_flight_on_killed"]
    assert r["user_visible_failures"] == 0
    assert r["ejected_after_s"] is not None and r["readmitted_after_healthy_s"] is not None


def test_replica_slow_fails_nothing() -> None:
    r = run_scenario("replica-slow", quick=True, duration=2.0)
    assert r["failed"] == 0
    assert r["phases"]["healthy"]["ok"] > 0 and r["phases"]["one_slow"]["ok"] > 0


def test_redis_outage_fails_nothing_and_state_converges() -> None:
    r = run_scenario("redis-outage", quick=True)
    assert r["during_outage"]["requests"] > 0
    assert r["failed_requests"] == 0
    assert r["consistent_after_s"] is not None


def test_overload_rejects_with_retry_after_and_serves_the_rest() -> None:
    r = run_scenario("overload", quick=True)
    assert r["failed"] == 0
    assert r["rejected"] > 0 and r["rejected_with_retry_after"] == r["rejected"]
    assert r["load"]["ok"] > 0


def test_short_soak_has_no_errors() -> None:
    r = run_scenario("soak", duration=5.0)
    assert r["errors"] == 0 and r["load"]["ok"] > 0
    assert len(r["samples"]) >= 2 and r["gateway_rss_end_mb"] > 0
