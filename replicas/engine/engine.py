"""The asynchronous engine: one step loop over the scheduler, the block pool and a ``ModelRunner``.

Use it in-process (tests, the torch runner's correctness check) or behind the HTTP server::

    engine = Engine(cfg, runner, tokenizer)        # tokenizer: replicas.engine.tokenizer.load_tokenizer(dir)
    async for out in engine.generate(prompt_token_ids, SamplingParams(max_tokens=32, temperature=0)):
        out.new_token_ids, out.new_text, out.finished, out.finish_reason
    await engine.stop()

``generate`` starts the loop on first use; closing the generator early (``contextlib.aclosing``, ``aclose()``,
garbage collection) or cancelling the task aborts the request and frees its blocks. ``add_request`` raises
``foresight.errors.APIError``: 400 for a prompt that cannot fit (``max_model_len``, the KV pool), 503 with
Retry-After when ``max_waiting`` requests wait. The server uses ``add_request`` + ``stream_batches`` (all outputs
ready at once, so a slow reader gets them coalesced); listeners (``EngineListener``: metrics, tracing) observe
steps, admissions and finishes.

Stop logic lives here, for every runner: EOS (unless ``ignore_eos``), ``stop_token_ids``, stop strings
(never leaked into the text), ``forced_output_tokens`` (finish "stop"), ``max_tokens`` and ``max_model_len``
(finish "length"). A runner failure fails the requests of that step and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from foresight.errors import APIError
from replicas.config import ReplicaConfig
from replicas.engine.block_pool import BlockPool, cdiv
from replicas.engine.detokenizer import IncrementalDetokenizer
from replicas.engine.kv_events import AllBlocksCleared, KVEventPublisher
from replicas.engine.request import Request, RequestStatus, SamplingParams
from replicas.engine.scheduler import Scheduler
from replicas.runners.base import ModelRunner

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    error: str | None = None


@dataclass
class StepStats:
    duration: float
    num_prefill_tokens: int
    num_decode_tokens: int
    num_seqs: int
    num_preempted: int
    num_sampled: int = 0


class EngineListener(Protocol):
    """Observers (metrics): called on the event loop, must be cheap."""

    def on_step(self, stats: StepStats) -> None: ...
    def on_admit(self, req: Request, cached_tokens: int) -> None: ...
    def on_finish(self, req: Request) -> None: ...


class _Handle:
    """A request's mailbox: the step loop pushes outputs, one reader takes all that is ready (cheaper than an
    asyncio.Queue on the per-token path)."""

    __slots__ = ("req", "outputs", "waiter", "detok")

    def __init__(self, req: Request, detok: IncrementalDetokenizer | None) -> None:
        self.req = req
        self.outputs: list[RequestOutput] = []
        self.waiter: asyncio.Future[None] | None = None
        self.detok = detok

    def push(self, out: RequestOutput) -> None:
        self.outputs.append(out)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[RequestOutput]:
        while not self.outputs:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        outs, self.outputs = self.outputs, []
        return outs


class Engine:
    def __init__(self, cfg: ReplicaConfig, runner: ModelRunner, tokenizer: Any | None = None, *,
                 publisher: KVEventPublisher | None = None, ema_alpha: float = 0.2) -> None:
        cfg.validate()
        self.cfg = cfg
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_model_len = cfg.max_model_len or getattr(runner, "max_model_len", None) or 4096
        self.pool = BlockPool(runner.kv_capacity_blocks(cfg.block_size), cfg.block_size, cfg.hash_seed,
                              host_blocks=runner.host_kv_capacity_blocks(cfg.block_size))
        self.scheduler = Scheduler(self.pool, cfg.max_num_seqs, cfg.max_batched_tokens, cfg.priority_max_wait_s,
                                   cfg.prefill_reserve, cfg.decode_step_tokens)
        self.publisher = publisher or KVEventPublisher(cfg.replica_id)
        self.publisher.emit([AllBlocksCleared()])  # seq 1 of every epoch: the replica starts empty
        self.listeners: list[EngineListener] = []
        self.eos_ids: frozenset[int] = frozenset(getattr(tokenizer, "eos_token_ids", ()) or ())
        self._handles: dict[str, _Handle] = {}
        self._in_step: set[str] = set()
        self._deferred_release: list[str] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._alpha = ema_alpha
        described = runner.describe()
        self.prefill_tokens_per_s: float | None = _num(described.get("prefill_tokens_per_s"))
        self.decode_step_ms: float | None = _num(described.get("decode_step_ms"))
        self.num_steps = 0

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            await self.publisher.start()
            self._task = asyncio.create_task(self._loop(), name="engine-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for rid in list(self._handles):
            self.abort(rid)
        await self.publisher.stop()

    # -- requests -----------------------------------------------------------------------------------------
    def add_request(self, prompt_token_ids: Sequence[int], sampling: SamplingParams,
                    request_id: str | None = None, arrival_time: float | None = None, priority: int = 0) -> str:
        """Queue a request; ``arrival_time`` (``time.monotonic()``) is when the server received it (default: now);
        ``priority`` orders it among waiting requests (lower first, see ``Scheduler``)."""
        prompt = list(prompt_token_ids)
        n = len(prompt)
        if n == 0:
            raise APIError(400, "the prompt is empty", param="prompt")
        vocab = getattr(self.tokenizer, "vocab_size", None)
        if vocab is not None and (min(prompt) < 0 or max(prompt) >= vocab):
            raise APIError(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
        if n >= self.max_model_len:
            raise APIError(400, f"this model's maximum context length is {self.max_model_len} tokens, but the "
                           f"prompt has {n} tokens", param="prompt", code="context_length_exceeded")
        if sampling.max_tokens < 1:
            raise APIError(400, "max_tokens must be at least 1", param="max_tokens")
        if n + sampling.max_tokens > self.max_model_len:
            raise APIError(400, f"this model's maximum context length is {self.max_model_len} tokens; the prompt "
                           f"({n}) plus max_tokens ({sampling.max_tokens}) exceeds it", param="max_tokens",
                           code="context_length_exceeded")
        if cdiv(n + 1, self.pool.block_size) > self.pool.num_blocks:
            raise APIError(400, f"the prompt ({n} tokens) does not fit in this replica's KV cache "
                           f"({self.pool.num_blocks * self.pool.block_size} tokens)", param="prompt",
                           code="context_length_exceeded")
        if len(self.scheduler.waiting) >= self.cfg.max_waiting:
            raise APIError(503, "the replica's queue is full", code="queue_full", retry_after=1.0)
        rid = request_id or uuid.uuid4().hex
        if rid in self._handles:
            raise APIError(400, f"duplicate request id {rid!r}", param="request_id")
        req = Request(rid, prompt, sampling, priority=priority)
        if arrival_time is not None:
            req.arrival_time = arrival_time
        detok = IncrementalDetokenizer(self.tokenizer, prompt, sampling.stop) if self.tokenizer is not None else None
        self._handles[rid] = _Handle(req, detok)
        self.scheduler.add(req)
        self._wake.set()
        return rid

    async def stream_batches(self, request_id: str) -> AsyncIterator[list[RequestOutput]]:
        """Outputs of a request added with ``add_request``, each time all that is ready (so a slow reader gets
        them coalesced); leaving early aborts the request (close the generator, e.g. with ``aclosing``)."""
        handle = self._handles.get(request_id)
        if handle is None:
            raise KeyError(request_id)
        await self.start()
        finished = False
        try:
            while not finished:
                outs = await handle.take()
                finished = outs[-1].finished
                yield outs
        finally:
            if not finished:
                self.abort(request_id)

    async def stream(self, request_id: str) -> AsyncIterator[RequestOutput]:
        """Outputs of a request added with ``add_request``, one by one; leaving early aborts it."""
        batches = self.stream_batches(request_id)
        try:
            async for outs in batches:
                for out in outs:
                    yield out
        finally:
            await batches.aclose()

    async def generate(self, prompt_token_ids: Sequence[int], sampling: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        rid = self.add_request(prompt_token_ids, sampling, request_id)
        async with contextlib.aclosing(self.stream(rid)) as outs:
            async for out in outs:
                yield out

    def abort(self, request_id: str) -> None:
        handle = self._handles.get(request_id)
        if handle is None or handle.req.is_finished:
            return
        self._finish(handle, RequestStatus.FINISHED_ABORTED)

    def request(self, request_id: str) -> Request | None:
        handle = self._handles.get(request_id)
        return handle.req if handle else None

    # -- the step loop ------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            if not self.scheduler.has_work():
                self.runner.on_idle()
                self._wake.clear()
                await self._wake.wait()
                continue
            sched = self.scheduler.schedule()
            for req in sched.unfittable:
                self._finish(self._handles[req.request_id], RequestStatus.FINISHED_LENGTH, freed=True)
            for req, hit in sched.admitted:
                for lst in self.listeners:
                    lst.on_admit(req, hit)
            batch = sched.batch
            if not batch.chunks:
                await asyncio.sleep(0.001)  # nothing fits this instant (cannot last: see the scheduler)
                continue
            self._in_step = {c.request.request_id for c in batch.chunks}
            num_prefill, num_decode = sched.token_split()
            t0 = time.monotonic()
            try:
                tokens = await self.runner.execute(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("runner step failed")
                for c in batch.chunks:
                    handle = self._handles.get(c.request.request_id)
                    if handle is not None and not c.request.is_finished:
                        self._finish(handle, RequestStatus.FINISHED_ABORTED, error=f"runner failure: {exc}")
                self.pool.forget_loaded(batch.transfers)
                tokens = None
            finally:
                self._in_step = set()
                for rid in self._deferred_release:
                    self.runner.release(rid)
                self._deferred_release.clear()
            measured = self.runner.last_step_seconds() if tokens is not None else None
            duration = measured if measured is not None else time.monotonic() - t0
            if tokens is not None:
                self._process(batch.chunks, tokens)
            self._account(StepStats(duration, num_prefill, num_decode,
                                    len(batch.chunks), len(sched.preempted), batch.num_sampling))
            self.publisher.emit(self.pool.drain_events())

    def _process(self, chunks: list[Any], tokens: list[int | None]) -> None:
        """Advance each request by its chunk; append sampled tokens; stop or stream them. The per-token path:
        kept lean because at scale it is most of the host work of a step."""
        now = time.monotonic()
        bs = self.pool.block_size
        for chunk, tok in zip(chunks, tokens, strict=True):
            req: Request = chunk.request
            if req.status is not RequestStatus.RUNNING:  # aborted while its step ran
                continue
            before = req.num_computed_tokens
            after = req.num_computed_tokens = before + chunk.num_new_tokens
            if after // bs != before // bs:  # a block filled up: register it in the prefix cache
                self.pool.cache_full_blocks(req)
            if tok is None:
                continue
            handle = self._handles[req.request_id]
            req.output_token_ids.append(tok)
            if req.first_token_time is None:
                req.first_token_time = now
            reason = self._stop_reason(handle, tok)
            if reason is not None:
                status = RequestStatus.FINISHED_LENGTH if reason == "length" else RequestStatus.FINISHED_STOPPED
                self._finish(handle, status, new_token=tok)
            else:
                text = handle.detok.take(False) if handle.detok else ""
                handle.push(RequestOutput(req.request_id, [tok], text, False, None, len(req.prompt_token_ids),
                                          req.num_cached_tokens, len(req.output_token_ids)))

    def _stop_reason(self, handle: _Handle, tok: int) -> str | None:
        req, sp = handle.req, handle.req.sampling
        stop_str = handle.detok.add(tok) if handle.detok else None
        if (tok in self.eos_ids and not sp.ignore_eos) or stop_str is not None or (
                sp.stop_token_ids and tok in sp.stop_token_ids):
            return "stop"
        n_out = len(req.output_token_ids)
        if sp.forced_output_tokens is not None and n_out >= sp.forced_output_tokens:
            return "stop"
        if n_out >= sp.max_tokens or n_out + len(req.prompt_token_ids) >= self.max_model_len:
            return "length"
        return None

    def _finish(self, handle: _Handle, status: RequestStatus, *, new_token: int | None = None,
                error: str | None = None, freed: bool = False) -> None:
        req = handle.req
        req.status = status
        req.finish_reason = "error" if error else status.value
        if not freed:
            self.scheduler.remove(req)
        else:
            self.pool.free(req)
        if req.request_id in self._in_step:
            self._deferred_release.append(req.request_id)
        else:
            self.runner.release(req.request_id)
        text = handle.detok.take(True) if handle.detok and status != RequestStatus.FINISHED_ABORTED else ""
        handle.push(RequestOutput(
            req.request_id, [new_token] if new_token is not None else [], text, True, req.finish_reason,
            req.num_prompt_tokens, req.num_cached_tokens, req.num_output_tokens, error))
        del self._handles[req.request_id]
        for lst in self.listeners:
            lst.on_finish(req)

    def _account(self, stats: StepStats) -> None:
        self.num_steps += 1
        a = self._alpha
        if stats.num_prefill_tokens and stats.duration > 0:
            rate = stats.num_prefill_tokens / stats.duration
            self.prefill_tokens_per_s = rate if self.prefill_tokens_per_s is None else (
                (1 - a) * self.prefill_tokens_per_s + a * rate)
        if stats.num_decode_tokens:
            ms = 1e3 * stats.duration
            self.decode_step_ms = ms if self.decode_step_ms is None else (1 - a) * self.decode_step_ms + a * ms
        for lst in self.listeners:
            lst.on_step(stats)

    # -- state for the server -----------------------------------------------------------------------------
    def load_report(self) -> dict[str, Any]:
        """DESIGN.md section 3, plus what a gateway needs to hash prompts like this replica."""
        return {
            "replica_id": self.cfg.replica_id, "url": self.cfg.public_url, "model": self.cfg.model_name,
            **self.scheduler.load_fields(),
            "prefill_tokens_per_s": self.prefill_tokens_per_s, "decode_step_ms": self.decode_step_ms,
            "ts": time.time(), "hash_seed": self.cfg.hash_seed, "max_model_len": self.max_model_len,
            "kv_events_epoch": self.publisher.epoch, "kv_events_seq": self.publisher.seq,
            "runner": self.runner.name,
        }

    def kv_snapshot(self) -> dict[str, Any]:
        """The cached block ids, consistent with the KV event batch numbered ``seq``."""
        return {"replica_id": self.cfg.replica_id, "epoch": self.publisher.epoch, "seq": self.publisher.seq,
                "block_size": self.pool.block_size, "hash_seed": self.cfg.hash_seed,
                "block_hashes": self.pool.cached_block_hashes()}


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
