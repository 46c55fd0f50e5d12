"""Scheduler: the token budget, chunked prefill, prefix hits and preemption (driven step by step, no runner)."""

from __future__ import annotations

from replicas.engine.block_pool import BlockPool
from replicas.engine.request import Request, RequestStatus, SamplingParams
from replicas.engine.scheduler import Scheduler, SchedulerOutput

BS = 4


def req(rid: str, n: int, base: int = 0) -> Request:
    return Request(rid, [base + i for i in range(n)], SamplingParams(max_tokens=100))


def complete(sched: Scheduler, out: SchedulerOutput, token: int = 7) -> None:
    """What the engine does after a step: advance computed tokens, cache blocks, append sampled tokens."""
    for c in out.batch.chunks:
        c.request.num_computed_tokens += c.num_new_tokens
        sched.pool.cache_full_blocks(c.request)
        if c.sample:
            c.request.output_token_ids.append(token)
    sched.pool.check_integrity()


def test_budget_caps_a_step_and_running_requests_go_first() -> None:
    s = Scheduler(BlockPool(64, BS), max_num_seqs=8, max_batched_tokens=10, decode_step_tokens=10)
    a, b = req("a", 6), req("b", 6, 100)
    s.add(a)
    s.add(b)
    out = s.schedule()
    assert [(c.request.request_id, c.num_new_tokens, c.sample) for c in out.batch.chunks] == [
        ("a", 6, True), ("b", 4, False)]  # b's prompt is chunked by the budget
    assert out.batch.num_tokens == 10
    complete(s, out)
    out = s.schedule()  # a decodes first (running order), then b's rest
    assert [(c.request.request_id, c.num_new_tokens, c.sample) for c in out.batch.chunks] == [
        ("a", 1, True), ("b", 2, True)]
    complete(s, out)
    assert b.num_output_tokens == 1 and a.num_output_tokens == 2


def test_long_prompt_is_prefilled_in_chunks() -> None:
    s = Scheduler(BlockPool(64, BS), max_batched_tokens=16)
    a = req("a", 40)
    s.add(a)
    sizes = []
    while not a.output_token_ids:
        out = s.schedule()
        sizes.append(out.batch.chunks[0].num_new_tokens)
        assert out.batch.num_tokens <= 16
        complete(s, out)
    assert sizes == [16, 16, 8]


def test_max_num_seqs_limits_running() -> None:
    s = Scheduler(BlockPool(64, BS), max_num_seqs=2, max_batched_tokens=100)
    for i in range(3):
        s.add(req(f"r{i}", 3, 10 * i))
    out = s.schedule()
    assert len(out.batch.chunks) == 2 and len(s.waiting) == 1


def test_prefix_hit_skips_cached_tokens() -> None:
    s = Scheduler(BlockPool(64, BS), max_batched_tokens=100)
    first = req("first", 10)
    s.add(first)
    complete(s, s.schedule())
    s.remove(first)
    again = req("again", 13)  # shares 2 full blocks (8 tokens) with "first"
    s.add(again)
    out = s.schedule()
    assert out.admitted == [(again, 8)] and again.num_cached_tokens == 8
    assert out.batch.chunks[0].num_new_tokens == 5
    complete(s, out)
    assert again.num_computed_tokens == 13


def test_queued_work_in_the_load_report_leaves_out_what_the_prefix_cache_holds() -> None:
    s = Scheduler(BlockPool(64, BS), max_batched_tokens=100, max_num_seqs=1)
    first = req("first", 10)
    s.add(first)
    complete(s, s.schedule())  # "first" runs on and holds the only sequence slot
    s.add(req("again", 13))  # shares 2 full blocks (8 tokens) with "first": 5 tokens of work
    s.add(req("other", 6, 100))  # nothing cached
    assert s.load_fields()["waiting_prompt_tokens"] == 5 + 6


def test_preemption_frees_the_newest_and_recomputes_it_later() -> None:
    s = Scheduler(BlockPool(4, BS), max_batched_tokens=100)
    old, new = req("old", 7), req("new", 8, 50)
    s.add(old)
    s.add(new)
    complete(s, s.schedule())  # old: 2 blocks, new: 2 blocks (8 tokens + its first output needs a third later)
    assert s.pool.num_free == 0
    out = s.schedule()  # new needs a third block, none is free: the newest (itself) is preempted
    assert out.preempted == [new] and new.status == RequestStatus.PREEMPTED and new.num_computed_tokens == 0
    assert s.waiting_tokens() == 1  # its 2 full blocks stay cached: only the output token is left to compute
    assert [c.request for c in out.batch.chunks] == [old] and s.waiting[0] is new
    complete(s, out)
    s.remove(old)  # old finishes: new comes back, hitting its own still-cached prefix
    out = s.schedule()
    assert [c.request for c in out.batch.chunks] == [new]
    assert new.num_computed_tokens == 8 and out.batch.chunks[0].num_new_tokens == 1  # recompute the output token
    assert out.admitted == []  # not counted as a new admission
    complete(s, out)
    assert new.num_output_tokens == 2


def test_a_request_larger_than_the_pool_is_reported_unfittable() -> None:
    s = Scheduler(BlockPool(2, BS), max_batched_tokens=100)
    a = req("a", 8)
    s.add(a)
    complete(s, s.schedule())
    out = s.schedule()  # 9 tokens need 3 blocks: more than the whole pool
    assert out.unfittable == [a] and a not in s.running


def test_decoding_requests_cap_the_step_budget() -> None:
    # Budget 40, 12 while anyone decodes: a long prompt arriving beside a decode is prefilled in small chunks.
    s = Scheduler(BlockPool(256, BS), max_num_seqs=8, max_batched_tokens=40, decode_step_tokens=12)
    a = req("a", 8)
    s.add(a)
    out = s.schedule()
    assert [c.num_new_tokens for c in out.batch.chunks] == [8]  # nobody decodes yet: the whole budget is there
    complete(s, out)
    s.add(req("b", 100, 1000))
    out = s.schedule()
    assert [(c.request.request_id, c.num_new_tokens) for c in out.batch.chunks] == [("a", 1), ("b", 11)]
    complete(s, out)
    s.remove(a)  # the decode ends: b's prefill takes the whole budget again
    out = s.schedule()
    assert [(c.request.request_id, c.num_new_tokens) for c in out.batch.chunks] == [("b", 40)]


def test_the_prefill_reserve_shrinks_with_a_capped_budget() -> None:
    s = Scheduler(BlockPool(512, BS), max_num_seqs=8, max_batched_tokens=40, prefill_reserve=10,
                  decode_step_tokens=20)
    s.add(req("a", 4))
    complete(s, s.schedule())  # a decodes from now on
    s.add(req("long", 400, 1000))
    complete(s, s.schedule())  # a + 19 tokens of the long prompt (nobody waits: no reserve)
    s.add(req("short", 8, 5000))
    out = s.schedule()
    # The capped budget is 20; the reserve is a quarter of it (5): a 1, long 14, short the last 5.
    assert [(c.request.request_id, c.num_new_tokens) for c in out.batch.chunks] == [("a", 1), ("long", 14),
                                                                                      ("short", 5)]


def test_decodes_go_before_an_older_running_prefill() -> None:
    # A long prompt admitted first would take the whole budget every step; the younger requests' decodes go first.
    s = Scheduler(BlockPool(256, BS), max_num_seqs=8, max_batched_tokens=20, decode_step_tokens=20)
    s.add(req("long", 400))
    complete(s, s.schedule())
    s.add(req("b", 3, 1000))
    out = s.schedule()
    # b waits: the long prefill leaves it the reserve (a quarter of the budget).
    assert [(c.request.request_id, c.num_new_tokens) for c in out.batch.chunks] == [("long", 15), ("b", 3)]
    complete(s, out)
    for _ in range(3):  # b decodes in every step while the long prompt goes on in the rest of the budget
        out = s.schedule()
        assert [(c.request.request_id, c.num_new_tokens) for c in out.batch.chunks] == [("b", 1), ("long", 19)]
        complete(s, out)


def test_preemption_spares_requests_already_in_the_step() -> None:
    # d decodes before the older long prefill; when the prefill's next chunk needs more blocks than are free, the
    # victim is the newest request not yet in the step: none but the prefill itself, so d's decode stays.
    s = Scheduler(BlockPool(12, BS), max_num_seqs=8, max_batched_tokens=12, decode_step_tokens=12)
    s.add(req("long", 44))
    complete(s, s.schedule())
    s.add(req("d", 3, 1000))
    steps = []
    for _ in range(3):
        out = s.schedule()
        steps.append(([(c.request.request_id, c.num_new_tokens) for c in out.batch.chunks],
                      [r.request_id for r in out.preempted]))
        complete(s, out)
    assert steps == [([("long", 9), ("d", 3)], []), ([("d", 1), ("long", 11)], []), ([("d", 1)], ["long"])]
    assert s.waiting[0].request_id == "long" and s.waiting[0].status is RequestStatus.PREEMPTED
