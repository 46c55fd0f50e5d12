"""Scheduler admission order: priority (lower first), FIFO among equals, preempted first, aging past a bound."""

from __future__ import annotations

from replicas.engine.block_pool import BlockPool
from replicas.engine.request import Request, RequestStatus, SamplingParams
from replicas.engine.scheduler import Scheduler

BS = 4


def req(rid: str, n: int, base: int, priority: int = 0, arrival: float = 0.0) -> Request:
    return Request(rid, [base + i for i in range(n)], SamplingParams(max_tokens=100), arrival_time=arrival,
                   priority=priority)


def admitted(s: Scheduler, now: float = 0.0) -> list[str]:
    return [r.request_id for r, _ in s.schedule(now).admitted]


def test_lower_priority_is_admitted_first_and_equal_ones_keep_arrival_order() -> None:
    s = Scheduler(BlockPool(64, BS), max_num_seqs=1, max_batched_tokens=100)
    for rid, prio in [("long", 900), ("short", 10), ("mid", 50), ("short2", 10)]:
        s.add(req(rid, 3, 100 * len(s.waiting), prio))
    order = []
    for _ in range(4):
        order += admitted(s)
        s.remove(s.running[0])  # finish it: frees the one slot
    assert order == ["short", "short2", "mid", "long"]
    assert not s.waiting and s._prioritised == 0


def test_without_priorities_admission_is_fifo() -> None:
    s = Scheduler(BlockPool(64, BS), max_num_seqs=1, max_batched_tokens=100)
    for i in range(3):
        s.add(req(f"r{i}", 3, 10 * i))
    order = []
    for _ in range(3):
        order += admitted(s)
        s.remove(s.running[0])
    assert order == ["r0", "r1", "r2"]


def test_a_request_waiting_past_the_bound_goes_first() -> None:
    s = Scheduler(BlockPool(64, BS), max_num_seqs=1, max_batched_tokens=100, priority_max_wait_s=5.0)
    s.add(req("old-long", 3, 0, priority=1000, arrival=0.0))
    s.add(req("new-short", 3, 100, priority=1, arrival=4.0))
    assert admitted(s, now=4.5) == ["new-short"]  # the long one has waited 4.5 s < 5 s
    s.remove(s.running[0])
    s.add(req("newer-short", 3, 200, priority=1, arrival=5.5))
    assert admitted(s, now=6.0) == ["old-long"]  # 6 s >= 5 s: it is not starved any longer


def test_preempted_request_goes_before_lower_priorities() -> None:
    s = Scheduler(BlockPool(64, BS), max_num_seqs=4, max_batched_tokens=100)
    big = req("big", 3, 0, priority=500)
    s.add(big)
    assert admitted(s) == ["big"]
    s._preempt(s.running.pop())
    assert big.status is RequestStatus.PREEMPTED
    s.add(req("small", 3, 100, priority=1))
    out = s.schedule()
    assert [c.request.request_id for c in out.batch.chunks][:1] == ["big"]


def test_removing_a_waiting_prioritised_request_keeps_the_count() -> None:
    s = Scheduler(BlockPool(64, BS), max_num_seqs=1, max_batched_tokens=100)
    a, b = req("a", 3, 0, priority=5), req("b", 3, 100, priority=7)
    s.add(a)
    s.add(b)
    s.remove(b)  # an abort while queued
    assert s._prioritised == 1
    assert admitted(s) == ["a"] and s._prioritised == 0


def prefilling(prompt: int, reserve: int, max_num_seqs: int = 8) -> Scheduler:
    """A scheduler (budget 100) one step into prefilling a ``prompt``-token request, then a short one arrives."""
    s = Scheduler(BlockPool(256, BS), max_num_seqs=max_num_seqs, max_batched_tokens=100, prefill_reserve=reserve)
    s.add(req("long", prompt, 0))
    first = s.schedule(0.0)
    assert [(c.request.request_id, c.num_new_tokens) for c in first.batch.chunks] == [("long", 100)]  # alone: all
    s.running[0].num_computed_tokens += 100
    s.add(req("short", 20, 1000, priority=5))
    return s


def step(s: Scheduler) -> list[tuple[str, int]]:
    return [(c.request.request_id, c.num_new_tokens) for c in s.schedule(0.0).batch.chunks]


def test_a_long_prefill_leaves_part_of_each_step_to_waiting_requests() -> None:
    s = prefilling(400, 25)
    assert step(s) == [("long", 75), ("short", 20)]  # the short one is admitted beside the long prefill
    assert s.long_prefills() == (300, 400)  # left, uncached in all; the short one is not long


def test_no_reserve_keeps_the_old_head_of_line_order() -> None:
    assert step(prefilling(400, 0)) == [("long", 100)]


def test_the_reserve_needs_a_free_sequence_slot() -> None:
    # No slot for the short one: reserving budget for it would only slow the long prefill down.
    assert step(prefilling(400, 25, max_num_seqs=1)) == [("long", 100)]


def test_a_prefill_that_ends_within_two_steps_is_not_cut() -> None:
    assert step(prefilling(300, 25)) == [("long", 100)]  # 200 left: two steps' budget
