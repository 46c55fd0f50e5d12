"""The `ModelRunner` seam: the engine hands a runner one scheduled step and gets sampled tokens back.

The same scheduler and block pool drive every runner. A runner owns the device (or its simulation) and the
KV memory; the engine owns which blocks each request uses (``Request.block_ids``) and all stop logic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from replicas.engine.host_tier import Transfers
from replicas.engine.request import Request


@dataclass(slots=True)
class ScheduledChunk:
    """One request's share of a step.

    The runner computes ``request.all_token_ids[start:start + num_new_tokens]`` with
    ``start = request.num_computed_tokens`` (the engine advances ``num_computed_tokens`` after the step).
    ``sample`` is True when the chunk reaches the request's last known token, so a new token is sampled;
    a partial prefill chunk does not sample.
    """

    request: Request
    num_new_tokens: int
    sample: bool


@dataclass
class StepBatch:
    """One step: the chunks to compute and, first, the KV copies between device and host tier (if any)."""

    chunks: list[ScheduledChunk]
    transfers: Transfers | None = None

    @property
    def num_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)

    @property
    def num_sampling(self) -> int:
        return sum(1 for c in self.chunks if c.sample)


class ModelRunner(ABC):
    """Contract:

    - ``kv_capacity_blocks(block_size)`` is called once at start; the engine's block pool has that many blocks
      and never hands out an index outside ``[0, capacity)``.
    - ``execute(batch)`` first runs ``batch.transfers`` when set (every offload, device block to host slot, then
      every load, host slot to device block), then one step, and returns, per chunk in order, the sampled token
      id (or None where ``chunk.sample`` is False). It must not block the event loop (run device work in a worker thread, or
      sleep asynchronously); the engine calls it with one batch at a time.
    - ``release(request_id)`` drops any per-request state (seeded RNGs, detokenizer state) once the request
      has finished or was aborted; preemption does not call it.
    """

    name: str = "base"

    @abstractmethod
    def kv_capacity_blocks(self, block_size: int) -> int: ...

    def host_kv_capacity_blocks(self, block_size: int) -> int:
        """Blocks of the host-memory KV tier (0: none). Called once at start, after ``kv_capacity_blocks``."""
        return 0

    @abstractmethod
    async def execute(self, batch: StepBatch) -> list[int | None]: ...

    def release(self, request_id: str) -> None:  # noqa: B027 - optional hook
        """Forget per-request state; default: nothing to forget."""

    def last_step_seconds(self) -> float | None:
        """How long the device worked on the last ``execute``, when the runner knows it better than the engine's
        wall clock around the call (a simulation: its modelled time, of which lateness it absorbed was never
        waited); None (default): the engine times the call. The engine's learned rates come from this."""
        return None

    def on_idle(self) -> None:  # noqa: B027 - optional hook
        """The engine ran out of work (nothing waiting or running); a simulated clock resets here."""

    def describe(self) -> dict[str, object]:
        """What the runner reports about itself (kernel, dtype, device, profile) for /health and logs."""
        return {"runner": self.name}
