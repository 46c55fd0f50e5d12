"""The scheduler: one rule, as vLLM's, under one token budget per step.

Running requests first (decodes, then running prefills, each oldest first), then waiting ones: each scheduled
request advances its computed tokens toward its total (``Request.num_tokens``), which covers chunked prefill (a
prompt larger than the remaining budget gets a chunk of it), decode (one token) and prefix hits (a newly admitted
request starts from its cached prefix, on the device or loaded back from the pool's host tier) alike. Decodes go
first because an older running prefill would otherwise take the whole budget step after step while every younger
request's decode waits for its whole prompt (stall-free batching, as Sarathi-Serve's). When the pool runs out of
blocks for a running request, the newest running request not yet in the step is preempted: its blocks are freed
(their content stays cached until evicted) and it goes back to the head of the waiting queue, to be recomputed
later. No request is admitted in a step that preempted.

Admission order: preempted requests first, then by ``Request.priority`` (lower first, as vLLM's; default 0; the
gateway sends its predicted work, so shortest predicted job first), equal priorities in arrival order (FIFO). A
request that has waited ``priority_max_wait_s`` or more goes before every prioritised one, so a long job is
delayed, never starved. The candidate that does not fit blocks the queue (nothing overtakes it).

Head-of-line blocking: a long prefill (more tokens left than two steps' budget) takes at most the budget minus
``prefill_reserve`` (a quarter by default) while requests wait to be admitted, so a long prompt (tens of thousands
of tokens, seconds of prefill) does not hold the whole budget while short or mostly cached requests queue behind
it; with nothing waiting it takes all. A prefill that can finish within two steps is not cut: it blocks others for
at most that long, and cutting it would delay its own first token by a step (on the Azure trace, prompts of up to
14k tokens, cutting prefills above one step's budget cost 0.5% of requests their SLO at 210 rps).

Time between tokens: while any running request decodes, a step schedules at most ``decode_step_tokens`` tokens
(default a quarter of ``max_batched_tokens``), as Sarathi-Serve sizes its chunks to a time-between-tokens target. A
prefill step is compute bound well below 8k tokens on a GPU, so smaller chunks cost its rate little, while every
decode sharing a step with an 8k-token chunk waits for all of it.

Limits: ``max_num_seqs`` running requests, ``max_batched_tokens`` per step. ``max_waiting`` and
``max_model_len`` are enforced on admission by the engine.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from replicas.engine.block_pool import Block, BlockPool, cdiv
from replicas.engine.request import Request, RequestStatus
from replicas.runners.base import ScheduledChunk, StepBatch


@dataclass
class SchedulerOutput:
    batch: StepBatch
    preempted: list[Request] = field(default_factory=list)
    # Requests that cannot fit even alone in the whole pool: the engine finishes them ("length").
    unfittable: list[Request] = field(default_factory=list)
    # Requests admitted for the first time this step, with their prefix-cache hit in tokens.
    admitted: list[tuple[Request, int]] = field(default_factory=list)

    def token_split(self) -> tuple[int, int]:
        """``(prefill tokens, decode tokens)`` of the batch; call it before the step's tokens are appended (a decode
        is one new token of a request that already has output)."""
        decode = prefill = 0
        for c in self.batch.chunks:
            if c.num_new_tokens == 1 and c.sample and c.request.output_token_ids:
                decode += 1
            else:
                prefill += c.num_new_tokens
        return prefill, decode


class Scheduler:
    def __init__(self, pool: BlockPool, max_num_seqs: int = 256, max_batched_tokens: int = 8192,
                 priority_max_wait_s: float = 30.0, prefill_reserve: int | None = None,
                 decode_step_tokens: int | None = None) -> None:
        self.pool = pool
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        # Step budget while requests decode (default a quarter); see the module docstring.
        self.decode_step_tokens = min(decode_step_tokens or max(1, max_batched_tokens // 4), max_batched_tokens)
        self._step_budget = max_batched_tokens  # the last step's budget (``_is_long`` measures against it)
        # Budget a continuing prefill leaves to admissions while requests wait (default a quarter; 0: none).
        self.prefill_reserve = max_batched_tokens // 4 if prefill_reserve is None else prefill_reserve
        self.priority_max_wait_s = priority_max_wait_s
        self.waiting: deque[Request] = deque()  # arrival order (preempted ones pushed back at the front)
        self.running: list[Request] = []
        self.num_preemptions = 0
        self._prioritised = 0  # waiting requests with a non-zero priority: none means plain FIFO, no scan

    def add(self, req: Request) -> None:
        req.status = RequestStatus.WAITING
        prefix, host = self._cached_prefix(req)
        req.expected_hit = (len(prefix) + len(host)) * self.pool.block_size
        self.waiting.append(req)
        if req.priority:
            self._prioritised += 1

    def _next_waiting(self, now: float) -> int:
        """Index in ``waiting`` of the request to admit next (see the module docstring)."""
        head = self.waiting[0]
        # ``waiting`` is in arrival order behind the preempted ones, so when its head has not waited too long,
        # no one has.
        if not self._prioritised or head.status is RequestStatus.PREEMPTED or (
                now - head.arrival_time >= self.priority_max_wait_s):
            return 0
        best, lowest = 0, head.priority
        for i, r in enumerate(self.waiting):
            if r.priority < lowest:  # strictly lower: equal priorities keep arrival order
                best, lowest = i, r.priority
        return best

    def _take_waiting(self, i: int) -> Request:
        req = self.waiting[i]
        del self.waiting[i]
        if req.priority:
            self._prioritised -= 1
        return req

    def remove(self, req: Request) -> None:
        """Take a request out of the queues and release its blocks (finish or abort)."""
        # By identity: Request is a dataclass whose == compares every field.
        for i, r in enumerate(self.running):
            if r is req:
                del self.running[i]
                break
        else:
            for i, r in enumerate(self.waiting):
                if r is req:
                    self._take_waiting(i)
                    break
        self.pool.free(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, req: Request) -> None:
        self.pool.free(req, forget=False)
        # Its full blocks stay cached (forget=False): what it had computed is about what it will find again.
        req.expected_hit = req.num_computed_tokens // self.pool.block_size * self.pool.block_size
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        self.waiting.appendleft(req)
        if req.priority:
            self._prioritised += 1
        self.num_preemptions += 1

    def schedule(self, now: float | None = None) -> SchedulerOutput:
        """The next step's batch; ``now`` is the clock of ``Request.arrival_time`` (default ``time.monotonic()``;
        a simulation passes its virtual time)."""
        now = time.monotonic() if now is None else now
        self.pool.begin_step()
        budget = self.max_batched_tokens
        if self.decode_step_tokens < budget and any(r.output_token_ids for r in self.running):
            budget = self.decode_step_tokens
        self._step_budget = budget
        out = SchedulerOutput(StepBatch([]))
        bs = self.pool.block_size
        # Someone could be admitted this step: a long prefill then leaves ``prefill_reserve`` of the budget to them
        # (the same share of a capped budget).
        reserve = 0
        if self.waiting and len(self.running) < self.max_num_seqs:
            reserve = self.prefill_reserve * budget // self.max_batched_tokens
        scheduled: set[int] = set()  # id() of the running requests in this step's batch
        for req in self._running_order():
            if budget <= 0:
                break
            if req.status is not RequestStatus.RUNNING:  # preempted earlier in this step
                continue
            left = req.num_tokens - req.num_computed_tokens
            num_new = min(left, budget)
            if reserve and self._is_long(left):
                num_new = min(num_new, budget - reserve)
                if num_new <= 0:  # the rest of the budget is the admissions'
                    continue
            if cdiv(req.num_computed_tokens + num_new, bs) > self.pool.num_blocks:
                self._drop_running(req)
                out.unfittable.append(req)
                continue
            # Fast path: a decode step inside the request's last block needs no allocation.
            fits = num_new == 1 and req.num_computed_tokens < len(req.block_ids) * bs
            while not fits and not self.pool.allocate(req, num_new):
                victim = self._victim(req, scheduled)
                self._drop_running(victim)
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    break
            if req.status is not RequestStatus.RUNNING:
                break  # the pool is exhausted: nothing more runs this step
            out.batch.chunks.append(ScheduledChunk(req, num_new, req.num_computed_tokens + num_new == req.num_tokens))
            scheduled.add(id(req))
            budget -= num_new

        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not out.preempted:
            pick = self._next_waiting(now)
            req = self.waiting[pick]
            prefix, host = self._cached_prefix(req) if req.num_computed_tokens == 0 else ([], [])
            hit = (len(prefix) + len(host)) * bs
            num_new = min(req.num_tokens - req.num_computed_tokens - hit, budget)
            if cdiv(req.num_computed_tokens + hit + num_new, bs) > self.pool.num_blocks:
                out.unfittable.append(self._take_waiting(pick))
                continue
            if not self.pool.allocate(req, num_new, prefix, host):
                break  # nothing overtakes the request whose turn it is
            self._take_waiting(pick)
            if req.status == RequestStatus.WAITING:  # first admission (not a preempted one coming back)
                req.num_cached_tokens = hit
                out.admitted.append((req, hit))
            req.num_computed_tokens += hit
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            out.batch.chunks.append(ScheduledChunk(req, num_new, req.num_computed_tokens + num_new == req.num_tokens))
            budget -= num_new
        out.batch.transfers = self.pool.take_transfers()
        return out

    def _cached_prefix(self, req: Request) -> tuple[list[Block], list[bytes]]:
        """The request's longest cached prefix: device blocks, then the host-tier blocks that continue it."""
        prefix = self.pool.find_prefix(req)
        return prefix, self.pool.find_host_prefix(req, len(prefix))

    def _running_order(self) -> list[Request]:
        """Decodes (one token left) first, then the running prefills, each oldest first: an older long prefill
        never takes the budget a decode needs, or its requests would stall for the whole prompt (stall-free
        batching, as Sarathi-Serve's)."""
        decodes = [r for r in self.running if r.num_tokens - r.num_computed_tokens == 1]
        if len(decodes) == len(self.running):
            return decodes
        return decodes + [r for r in self.running if r.num_tokens - r.num_computed_tokens != 1]

    def _victim(self, req: Request, scheduled: set[int]) -> Request:
        """The request to preempt so that ``req`` fits: the newest running one not already in this step's batch
        (``req`` itself when there is none)."""
        for r in reversed(self.running):
            if r is not req and id(r) not in scheduled:
                return r
        return req

    def _drop_running(self, req: Request) -> None:
        for j in range(len(self.running) - 1, -1, -1):  # by identity, newest first (victims usually are)
            if self.running[j] is req:
                del self.running[j]
                return

    def load_fields(self) -> dict[str, int]:
        """The load report's queue and KV fields (DESIGN.md section 3, and the host tier and long prefills beyond
        it), one source for the engine's report and the simulation's."""
        p = self.pool
        long_left, long_total = self.long_prefills()
        return {
            "block_size": p.block_size, "num_waiting": len(self.waiting), "num_running": len(self.running),
            "waiting_prompt_tokens": self.waiting_tokens(), "running_tokens": self.running_tokens(),
            "long_prefill_tokens": long_left, "long_prefill_total": long_total,
            "prefill_reserve": self.prefill_reserve,
            "kv_blocks_total": p.num_blocks, "kv_blocks_used": p.num_used, "kv_blocks_cached": p.num_cached,
            "max_num_seqs": self.max_num_seqs, "max_batched_tokens": self.max_batched_tokens,
            "kv_host_blocks_total": p.num_host_slots, "kv_host_blocks_cached": p.num_host_cached,
        }

    def waiting_tokens(self) -> int:
        """Tokens the waiting requests still have to prefill: their prompts less what the prefix cache held when
        they joined the queue (an estimate: it may gain or lose blocks before they are admitted). Counting the
        cached part made a queue of conversation turns look several times longer than its work."""
        return sum(max(0, r.num_tokens - r.num_computed_tokens - r.expected_hit) for r in self.waiting)

    def long_prefills(self) -> tuple[int, int]:
        """The running long prefills (``_is_long``), which share their steps with admissions (``prefill_reserve``)
        instead of blocking them: ``(tokens left to prefill, their uncached prompt tokens in all)``; the second is
        what a gateway counted for them on dispatch, so it can tell them from its dispatches still queued."""
        left = total = 0
        for r in self.running:
            n = r.num_prompt_tokens - r.num_computed_tokens
            if self._is_long(n):
                left += n
                total += r.num_prompt_tokens - r.num_cached_tokens
        return left, total

    def _is_long(self, left: int) -> bool:
        """A prefill the reserve applies to: more tokens left than two steps' budget."""
        return left > 2 * self._step_budget

    def running_tokens(self) -> int:
        return sum(r.num_tokens for r in self.running)
