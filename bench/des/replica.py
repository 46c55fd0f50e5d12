"""One simulated replica on the virtual clock: the real scheduler and block pool, steps timed by the cost model.

``SimReplica`` mirrors ``replicas.engine.Engine``'s step loop without its event loop: ``begin_step`` schedules a
batch and returns its duration (``CostModel.step_time`` of the chunks plus ``transfer_time`` of its host-tier
copies, exactly what the simulated runner waits);
``end_step`` applies the step (computed tokens, cached blocks, one sampled token per sampling chunk, forced
output lengths) and returns who got a first token and who finished. The load report and its moving averages follow
``Engine.load_report``/``Engine._account``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from replicas.engine.block_pool import BlockPool
from replicas.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from replicas.engine.request import Request, RequestStatus, SamplingParams
from replicas.engine.scheduler import Scheduler
from replicas.runners.cost_model import CostModel


@dataclass
class StepResult:
    first_tokens: list[Request] = field(default_factory=list)
    finished: list[Request] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def _event_dict(ev: BlockStored | BlockRemoved | AllBlocksCleared) -> dict[str, Any]:
    return {"type": ev.type, "block_hashes": list(getattr(ev, "block_hashes", ()))}


class SimReplica:
    def __init__(self, replica_id: str, cost: CostModel, *, block_size: int = 16, max_num_seqs: int = 256,
                 max_batched_tokens: int = 8192, kv_blocks: int | None = None, host_blocks: int = 0,
                 alpha: float = 0.2, decode_step_tokens: int | None = None) -> None:
        self.id = replica_id
        self.cost = cost
        blocks = kv_blocks or max(1, cost.kv_capacity_tokens() // block_size)
        self.pool = BlockPool(blocks, block_size, host_blocks=host_blocks)
        self.scheduler = Scheduler(self.pool, max_num_seqs, max_batched_tokens,
                                   decode_step_tokens=decode_step_tokens)
        self.busy = False
        self._batch: list[tuple[Request, int, bool]] = []
        self.alpha = alpha
        self.prefill_tokens_per_s: float | None = None
        self.decode_step_ms: float | None = None
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.preemptions = 0
        self.seq = 0
        self.unfit: list[Request] = []  # requests the pool can never hold; the cluster reports them as failed

    def add(self, request_id: str, tokens: list[int], output_tokens: int, now: float = 0.0,
            priority: int = 0) -> Request:
        """Queue a request arriving at virtual time ``now`` with the gateway's admission ``priority``."""
        req = Request(request_id, tokens, SamplingParams(max_tokens=output_tokens, ignore_eos=True,
                                                         forced_output_tokens=output_tokens),
                      arrival_time=now, priority=priority)
        self.scheduler.add(req)
        return req

    def begin_step(self, now: float = 0.0) -> float | None:
        """Schedule the next step at virtual time ``now``; its duration in seconds, or None when there is nothing
        to run."""
        if not self.scheduler.has_work():
            return None
        sched = self.scheduler.schedule(now)
        for req in sched.unfittable:  # longer than the whole pool: finished with nothing, as the engine does
            req.status = RequestStatus.FINISHED_LENGTH
            self.pool.free(req)
            self.unfit.append(req)
        for req, hit in sched.admitted:
            self.prompt_tokens += req.num_prompt_tokens
            self.cached_tokens += hit
        self.preemptions += len(sched.preempted)
        chunks = sched.batch.chunks
        if not chunks:
            return None
        self._batch = [(c.request, c.num_new_tokens, c.sample) for c in chunks]
        duration = self.cost.step_time((r.num_computed_tokens, n, s) for r, n, s in self._batch)
        if sched.batch.transfers:
            duration += self.cost.transfer_time(sched.batch.transfers.num_blocks * self.pool.block_size)
        prefill, decode = sched.token_split()
        a = self.alpha
        if prefill and duration > 0:
            rate = prefill / duration
            self.prefill_tokens_per_s = rate if self.prefill_tokens_per_s is None else (
                (1 - a) * self.prefill_tokens_per_s + a * rate)
        if decode:
            ms = 1e3 * duration
            self.decode_step_ms = ms if self.decode_step_ms is None else (1 - a) * self.decode_step_ms + a * ms
        self.busy = True
        return duration

    def end_step(self) -> StepResult:
        out = StepResult()
        for req, n, sample in self._batch:
            if req.is_finished:
                continue
            req.num_computed_tokens += n
            self.pool.cache_full_blocks(req)
            if not sample:
                continue
            if not req.output_token_ids:
                out.first_tokens.append(req)
            # An output token unique to the request, so output blocks never alias across requests.
            req.output_token_ids.append(256 + (zlib.crc32(req.request_id.encode()) + req.num_output_tokens) % 30000)
            if req.num_output_tokens >= (req.sampling.forced_output_tokens or req.sampling.max_tokens):
                req.status = RequestStatus.FINISHED_STOPPED
                self.scheduler.remove(req)
                out.finished.append(req)
        self._batch = []
        self.busy = False
        out.events = [_event_dict(e) for e in self.pool.drain_events()]
        if out.events:
            self.seq += 1
        return out

    def load_report(self, now: float) -> dict[str, Any]:
        return {"replica_id": self.id, **self.scheduler.load_fields(),
                "prefill_tokens_per_s": self.prefill_tokens_per_s, "decode_step_ms": self.decode_step_ms, "ts": now}
