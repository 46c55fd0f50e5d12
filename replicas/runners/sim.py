"""The simulated GPU runner: real token ids from the model's real tokenizer, step durations from the cost model.

Each step waits (asynchronously, the event loop stays free) for ``CostModel.step_time`` of the scheduled
batch, then returns one token per sampling chunk. Timing holds under load because the runner keeps a
virtual GPU clock: a busy step starts where the previous one ended (not when the engine got round to calling
it), so host work between steps and event-loop wake-up lateness are absorbed instead of accumulating, up to
``max_lag_s`` (50 ms); beyond that (the host cannot keep up) the clock resets to the wall clock and the lateness
becomes real (counted in ``lag_resets``, the time in ``lag_lost_s``). The engine calls ``on_idle`` when it runs
out of work, so an idle gap is never credited to the next step; the first step after idle starts at the arrival
of its earliest request: the server's own host work before it (body parsing, prompt hashing, scheduling) is the
simulator's, not the simulated GPU's, so it is absorbed up to ``max_lag_s`` like any other lateness.

Host-tier KV copies (``StepBatch.transfers``) add ``CostModel.transfer_time`` of the blocks moved to the step.

Output: a request emits tokens of a fixed text corpus from a random offset; it ends with EOS after a
log-normal number of tokens (mean ``sim_output_mean``), unless ``ignore_eos``. The engine stops it exactly
at ``SamplingParams.forced_output_tokens`` (the ``X-Sim-Output-Tokens`` header) or at ``max_tokens``.
Imports no torch.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

from replicas.config import ReplicaConfig
from replicas.engine.tokenizer import ReplicaTokenizer, load_tokenizer
from replicas.runners.base import ModelRunner, StepBatch
from replicas.runners.cost_model import CostModel, profile

_TIMER_HALF_TICK_S = 0.0005
_CORPUS = (
    "The gateway routes each request to the replica that will answer it first. A replica keeps the prefix "
    "blocks of recent prompts in its cache, so a request that shares a long prefix with an earlier one skips "
    "most of its prefill. Decoding is bound by memory bandwidth: every step reads the weights and the cache. "
    "Prefill is bound by compute, and its attention cost grows with the square of the prompt. Les modèles "
    "répondent vite quand le cache est chaud. Caffè, naïve façade, 東京 and ünïcödé keep the detokenizer honest. "
)


@dataclass
class _SimState:
    rng: random.Random
    offset: int
    eos_at: int | None  # output index at which EOS is emitted (None: never)


@dataclass
class StepRecord:
    start: float
    duration: float
    num_prefill_tokens: int
    num_decode_tokens: int
    num_seqs: int


class SimRunner(ModelRunner):
    name = "sim"

    def __init__(self, cost: CostModel, tokenizer: ReplicaTokenizer, *, kv_blocks: int | None = None,
                 kv_cache_memory: int | None = None, host_kv_memory: int = 0, output_mean: float = 256.0,
                 output_sigma: float = 0.8,
                 seed: int = 0, max_lag_s: float = 0.05, profile_name: str = "") -> None:
        self.cost = cost
        self.tokenizer = tokenizer
        self.profile_name = profile_name
        self._kv_blocks = kv_blocks
        self._kv_cache_memory = kv_cache_memory
        self._host_kv_memory = host_kv_memory
        self._block_size = 16  # set by kv_capacity_blocks
        self.output_mean = output_mean
        self.output_sigma = output_sigma
        self.seed = seed
        self.max_lag_s = max_lag_s
        self.eos_id = min(tokenizer.eos_token_ids) if tokenizer.eos_token_ids else None
        specials = tokenizer.special_token_ids | tokenizer.eos_token_ids
        self.corpus = [t for t in tokenizer.encode(_CORPUS) if t not in specials] or [0]
        # Outputs start where a token decodes to whole characters: one that starts inside a multi-byte character
        # (byte-level tokens of 東 decode only together) made a short output decode to no text at all.
        self.starts = [i for i, t in enumerate(self.corpus) if "\ufffd" not in tokenizer.decode([t])] or [0]
        self._states: dict[str, _SimState] = {}
        self._clock: float | None = None  # end of the last simulated step on the virtual GPU timeline
        self.lag_resets = 0
        self.lag_lost_s = 0.0
        self.steps: deque[StepRecord] = deque(maxlen=4096)

    @classmethod
    def from_config(cls, cfg: ReplicaConfig) -> SimRunner:
        from replicas.models import resolve_model

        return cls(profile(cfg.sim_profile), load_tokenizer(resolve_model(cfg.model)), kv_blocks=cfg.kv_blocks,
                   kv_cache_memory=cfg.kv_cache_memory, host_kv_memory=cfg.host_kv_memory,
                   output_mean=cfg.sim_output_mean,
                   output_sigma=cfg.sim_output_sigma, seed=cfg.sim_seed, profile_name=cfg.sim_profile)

    @property
    def max_model_len(self) -> int:
        return self.cost.model.max_model_len

    def kv_capacity_blocks(self, block_size: int) -> int:
        self._block_size = block_size
        if self._kv_blocks is not None:
            return self._kv_blocks
        if self._kv_cache_memory is not None:
            return max(1, self.cost.kv_blocks_in(self._kv_cache_memory, block_size))
        return max(1, self.cost.kv_capacity_tokens() // block_size)

    def host_kv_capacity_blocks(self, block_size: int) -> int:
        return self.cost.kv_blocks_in(self._host_kv_memory, block_size)

    def _state(self, request_id: str, sampling: Any) -> _SimState:
        st = self._states.get(request_id)
        if st is None:
            seed = sampling.seed if sampling.seed is not None else zlib.crc32(request_id.encode()) ^ self.seed
            rng = random.Random(seed)
            eos_at = None
            if not sampling.ignore_eos and sampling.forced_output_tokens is None and self.eos_id is not None:
                mu = math.log(max(self.output_mean, 1.0)) - self.output_sigma**2 / 2
                eos_at = max(0, int(rng.lognormvariate(mu, self.output_sigma)) - 1)
            st = self._states[request_id] = _SimState(rng, self.starts[rng.randrange(len(self.starts))], eos_at)
        return st

    async def execute(self, batch: StepBatch) -> list[int | None]:
        chunks = [(c.request.num_computed_tokens, c.num_new_tokens, c.sample) for c in batch.chunks]
        duration = self.cost.step_time(chunks)
        if batch.transfers:
            duration += self.cost.transfer_time(batch.transfers.num_blocks * self._block_size)
        now = time.monotonic()
        if self._clock is None:
            # From idle: the host work since the earliest arrival (parsing, hashing, scheduling) is absorbed
            # within the lag bound; otherwise a long prompt's hashing would add to the simulated prefill.
            arrival = min(c.request.arrival_time for c in batch.chunks)
            start = max(now - self.max_lag_s, min(now, arrival))
        elif now - self._clock > self.max_lag_s:
            self.lag_resets += 1
            self.lag_lost_s += now - self._clock  # simulated GPU time the busy host added to the timeline
            start = now
        else:
            start = max(self._clock, now - self.max_lag_s)
        self._clock = start + duration
        decode = sum(1 for c in batch.chunks if c.sample and c.num_new_tokens == 1 and c.request.output_token_ids)
        self.steps.append(StepRecord(start, duration, batch.num_tokens - decode, decode, len(batch.chunks)))
        # uvloop timers have a 1 ms resolution and never fire early: aim half a tick early so the expected
        # wake-up is on the deadline rather than ~0.5 ms after it.
        delay = self._clock - time.monotonic() - _TIMER_HALF_TICK_S
        if delay > 0:
            await asyncio.sleep(delay)
        out: list[int | None] = []
        for c in batch.chunks:
            if not c.sample:
                out.append(None)
                continue
            req = c.request
            st = self._state(req.request_id, req.sampling)
            k = req.num_output_tokens
            if st.eos_at is not None and k >= st.eos_at:
                out.append(self.eos_id)
            else:
                out.append(self.corpus[(st.offset + k) % len(self.corpus)])
        return out

    def last_step_seconds(self) -> float | None:
        # The modelled time: the wall time of ``execute`` is shorter by the lateness the clock absorbed (up to
        # ``max_lag_s``), which made a replica on a busy host report prefill rates several times its model's.
        return self.steps[-1].duration if self.steps else None

    def on_idle(self) -> None:
        self._clock = None

    def release(self, request_id: str) -> None:
        self._states.pop(request_id, None)

    def describe(self) -> dict[str, object]:
        c = self.cost
        return {"runner": self.name, "profile": self.profile_name, "cost_model": c.name,
                "mfu": c.mfu, "mbu": c.mbu, "step_overhead_s": c.overhead_s, "lag_resets": self.lag_resets,
                "lag_lost_s": round(self.lag_lost_s, 3),
                "prefill_tokens_per_s": 8192 / c.prefill_time(8192),
                "decode_step_ms": 1e3 * c.decode_step_time(1, 1024)}
