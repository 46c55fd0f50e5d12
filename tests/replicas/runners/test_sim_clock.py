"""The sim runner's virtual GPU clock: where the first step after idle starts, and when lateness becomes real."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from replicas.engine.request import Request, SamplingParams
from replicas.engine.tokenizer import load_tokenizer
from replicas.runners.base import ScheduledChunk, StepBatch
from replicas.runners.cost_model import profile
from replicas.runners.sim import SimRunner


def _batch(arrival: float, prompt: int = 1024) -> StepBatch:
    req = Request("r", list(range(3, 3 + prompt)), SamplingParams(max_tokens=1), arrival_time=arrival)
    return StepBatch([ScheduledChunk(req, prompt, True)])


@pytest.fixture
def runner(tiny_model_dir: Path) -> SimRunner:
    return SimRunner(profile("h100-llama8b"), load_tokenizer(tiny_model_dir), kv_blocks=256, max_lag_s=0.05)


async def test_first_step_after_idle_starts_at_arrival(runner: SimRunner) -> None:
    # 20 ms of host work since arrival (more than the modelled 1.5 ms per-step overhead) is the simulator's own
    # parsing and hashing, not simulated GPU time: the step is placed at the arrival.
    arrival = time.monotonic() - 0.02
    await runner.execute(_batch(arrival))
    assert runner.steps[-1].start == arrival
    assert runner.lag_resets == 0


async def test_credit_is_bounded_by_max_lag(runner: SimRunner) -> None:
    # A request that waited a whole second (an overloaded host) is not simulated as if it ran back then.
    arrival = time.monotonic() - 1.0
    before = time.monotonic()
    await runner.execute(_batch(arrival))
    assert runner.steps[-1].start >= before - runner.max_lag_s


async def test_busy_steps_chain_on_the_virtual_clock(runner: SimRunner) -> None:
    await runner.execute(_batch(time.monotonic()))
    first = runner.steps[-1]
    await runner.execute(_batch(time.monotonic(), prompt=16))
    assert runner.steps[-1].start == pytest.approx(first.start + first.duration)  # no idle in between
    runner.on_idle()
    arrival = time.monotonic()
    await runner.execute(_batch(arrival, prompt=16))
    assert runner.steps[-1].start == arrival  # an idle gap is never credited


async def test_host_tier_copies_add_their_transfer_time(tiny_model_dir: Path) -> None:
    from replicas.engine.host_tier import Transfers

    cost = profile("h100-llama8b")
    runner = SimRunner(cost, load_tokenizer(tiny_model_dir), kv_blocks=256, host_kv_memory=10**9)
    runner.kv_capacity_blocks(16)
    assert runner.host_kv_capacity_blocks(16) == 10**9 // (cost.model.kv_bytes_per_token * 16)
    plain = _batch(time.monotonic(), prompt=64)
    await runner.execute(plain)
    moved = _batch(time.monotonic(), prompt=64)
    moved.transfers = Transfers(offloads=[(1, 0), (2, 1)], loads=[(0, 3)])
    await runner.execute(moved)
    extra = runner.steps[-1].duration - runner.steps[-2].duration
    assert extra == pytest.approx(cost.transfer_time(3 * 16))


async def test_last_step_seconds_is_the_modelled_time_not_the_shorter_wall_time(runner: SimRunner) -> None:
    assert runner.last_step_seconds() is None  # nothing ran yet: the engine would time the call
    arrival = time.monotonic() - 0.04  # host work since arrival: absorbed into the step, never waited
    t0 = time.monotonic()
    await runner.execute(_batch(arrival, prompt=4096))
    wall = time.monotonic() - t0
    modelled = runner.steps[-1].duration
    assert runner.last_step_seconds() == modelled
    assert wall < modelled - 0.02  # what the engine's clock saw: a rate reported from it would be inflated


async def test_engine_learns_the_modelled_prefill_rate_when_the_host_is_late(tiny_model_dir: Path) -> None:
    from replicas.config import ReplicaConfig
    from replicas.engine.engine import Engine

    tok = load_tokenizer(tiny_model_dir)
    sim = SimRunner(profile("h100-llama8b"), tok, kv_blocks=1024, max_lag_s=0.05)
    engine = Engine(ReplicaConfig(kv_blocks=1024, max_model_len=8192), sim, tok)
    prior = engine.prefill_tokens_per_s  # the model's own figure, which the measured steps then move
    assert prior is not None
    try:
        prompt = [3 + i % 500 for i in range(4000)]
        rid = engine.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True),
                                 arrival_time=time.monotonic() - 0.045)
        async for outs in engine.stream_batches(rid):
            if outs[-1].finished:
                break
        step = sim.steps[0]
        assert step.duration > 0.06  # long enough that 45 ms of absorbed lateness would have shown
        # One step into the moving average (alpha 0.2); the wall time would have read ~45 ms shorter.
        assert engine.prefill_tokens_per_s == pytest.approx(0.8 * prior + 0.2 * 4000 / step.duration)
    finally:
        await engine.stop()


async def test_lateness_beyond_the_bound_is_counted_with_the_time_it_added(runner: SimRunner) -> None:
    await runner.execute(_batch(time.monotonic(), prompt=16))
    clock = runner.steps[-1].start + runner.steps[-1].duration
    time.sleep(0.15)  # noqa: ASYNC251 - the point: a host busy (blocking) well past the 50 ms the clock absorbs
    late = time.monotonic() - clock
    await runner.execute(_batch(time.monotonic(), prompt=16))
    assert runner.lag_resets == 1
    assert late <= runner.lag_lost_s <= late + 0.05
    assert runner.describe()["lag_lost_s"] == round(runner.lag_lost_s, 3)  # /health shows it as runner_lag_lost_s
