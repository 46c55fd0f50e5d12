"""Per-request state shared by the scheduler, the block pool and every runner.

Invariants: ``0 <= num_computed_tokens <= num_tokens``; the tokens still to compute are
``all_token_ids[num_computed_tokens:]``; ``block_ids`` is the request's block table (physical block indices
of the pool, in order) and covers at least ``num_computed_tokens`` tokens once a step is scheduled.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED)


@dataclass(slots=True)
class SamplingParams:
    """What the client asked for. ``top_k <= 0`` and ``top_p >= 1`` mean off; ``temperature == 0`` is greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    # Simulated runner only (X-Sim-Output-Tokens): stop after exactly this many tokens.
    forced_output_tokens: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(slots=True)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    block_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at the last admission
    expected_hit: int = 0  # tokens the prefix cache held when it last joined the queue (for the load report)
    finish_reason: str | None = None
    first_token_time: float | None = None
    priority: int = 0  # admission order among waiting requests: lower first (see Scheduler)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def token_at(self, pos: int) -> int:
        """The token at position ``pos`` of prompt + output (no list is concatenated)."""
        n = len(self.prompt_token_ids)
        return self.output_token_ids[pos - n] if pos >= n else self.prompt_token_ids[pos]

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status.finished
