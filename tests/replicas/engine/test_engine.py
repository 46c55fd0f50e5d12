"""The engine in-process over the simulated runner: stop conditions, aborts, preemption, admission errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from foresight.errors import APIError
from replicas.engine.engine import Engine, RequestOutput
from replicas.engine.request import SamplingParams
from replicas.runners.base import ModelRunner, StepBatch


async def collect(engine: Engine, prompt: list[int], sp: SamplingParams) -> tuple[list[int], str, RequestOutput]:
    ids, text, last = [], "", None
    async for out in engine.generate(prompt, sp):
        ids += out.new_token_ids
        text += out.new_text
        last = out
    assert last is not None and last.finished
    return ids, text, last


def prompt(engine: Engine, text: str = "What is the capital of France?") -> list[int]:
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": text}])


async def test_max_tokens_forced_length_and_eos(make_engine: Callable[..., Engine]) -> None:
    e = make_engine()
    p = prompt(e)
    ids, text, last = await collect(e, p, SamplingParams(max_tokens=5, ignore_eos=True))
    assert len(ids) == 5 and last.finish_reason == "length" and text == e.tokenizer.decode(ids)
    ids, _, last = await collect(e, p, SamplingParams(max_tokens=100, forced_output_tokens=17))
    assert len(ids) == 17 and last.finish_reason == "stop" and last.num_output_tokens == 17
    ids, text, last = await collect(e, p, SamplingParams(max_tokens=500, seed=3))  # sim EOS, mean 12 tokens
    assert last.finish_reason == "stop" and ids[-1] in e.eos_ids and len(ids) < 500
    assert text == e.tokenizer.decode(ids)  # EOS is not text
    assert e.pool.num_used == 0
    e.pool.check_integrity()


async def test_stop_string_is_not_in_the_output(make_engine: Callable[..., Engine]) -> None:
    e = make_engine()
    p = prompt(e)
    _, full, _ = await collect(e, p, SamplingParams(max_tokens=40, ignore_eos=True, seed=1))
    word = full.split()[3]
    _, text, last = await collect(e, p, SamplingParams(max_tokens=40, ignore_eos=True, seed=1, stop=[word]))
    assert last.finish_reason == "stop" and word not in text and full.startswith(text)


async def test_second_identical_prompt_hits_the_prefix_cache(make_engine: Callable[..., Engine]) -> None:
    e = make_engine()
    p = prompt(e, "tell me about the gateway and the replica " * 8)
    *_, first = await collect(e, p, SamplingParams(max_tokens=2, ignore_eos=True))
    *_, second = await collect(e, p, SamplingParams(max_tokens=2, ignore_eos=True))
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == (len(p) - 1) // 16 * 16 > 0


async def test_leaving_the_stream_aborts_and_frees_blocks(make_engine: Callable[..., Engine]) -> None:
    e = make_engine()
    agen = e.generate(prompt(e), SamplingParams(max_tokens=1000, ignore_eos=True))
    async for out in agen:
        if out.num_output_tokens >= 3:
            break
    assert e.pool.num_used > 0
    await agen.aclose()
    assert e.pool.num_used == 0 and not e.scheduler.running
    e.pool.check_integrity()


async def test_preemption_under_a_small_pool_keeps_outputs_complete(make_engine: Callable[..., Engine]) -> None:
    e = make_engine(kv_blocks=12)  # 192 tokens for four requests of ~60: someone must be preempted
    p = prompt(e)
    results = await asyncio.gather(*[
        collect(e, p + [10 + i], SamplingParams(max_tokens=40, ignore_eos=True, seed=i)) for i in range(4)])
    assert e.scheduler.num_preemptions > 0
    for i, (ids, _, last) in enumerate(results):
        assert len(ids) == 40 and last.finish_reason == "length"
        alone, _, _ = await collect(e, p + [10 + i], SamplingParams(max_tokens=40, ignore_eos=True, seed=i))
        assert alone == ids  # recomputation after preemption does not change the output
    assert e.pool.num_used == 0
    e.pool.check_integrity()


async def test_admission_errors(make_engine: Callable[..., Engine]) -> None:
    e = make_engine(kv_blocks=8, max_model_len=100, max_waiting=1)
    with pytest.raises(APIError) as err:
        e.add_request(list(range(100)), SamplingParams())
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    with pytest.raises(APIError) as err:
        e.add_request(list(range(50)), SamplingParams(max_tokens=60))
    assert err.value.status == 400 and err.value.param == "max_tokens"
    with pytest.raises(APIError) as err:
        e.add_request([5, 100000], SamplingParams())
    assert err.value.status == 400
    with pytest.raises(APIError):
        e.add_request([], SamplingParams())
    e.add_request([1, 2, 3], SamplingParams())  # waits (the loop is not started)
    with pytest.raises(APIError) as err:
        e.add_request([1, 2, 3], SamplingParams())
    assert err.value.status == 503 and err.value.headers()["Retry-After"] == "1"
    small = make_engine(kv_blocks=2, max_model_len=1000)
    with pytest.raises(APIError) as err:
        small.add_request(list(range(40)), SamplingParams(max_tokens=1))
    assert err.value.status == 400 and "KV cache" in err.value.message


class FailingRunner(ModelRunner):
    name = "failing"

    def __init__(self) -> None:
        self.calls = 0

    def kv_capacity_blocks(self, block_size: int) -> int:
        return 64

    async def execute(self, batch: StepBatch) -> list[int | None]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("device lost")
        return [5 if c.sample else None for c in batch.chunks]


async def test_runner_failure_fails_the_step_and_the_loop_goes_on(make_engine: Callable[..., Engine]) -> None:
    e = make_engine(runner=FailingRunner())
    *_, last = await collect(e, [1, 2, 3], SamplingParams(max_tokens=3))
    assert last.finish_reason == "error" and "device lost" in (last.error or "")
    ids, _, last = await collect(e, [1, 2, 3], SamplingParams(max_tokens=3))
    assert ids == [5, 5, 5] and last.finish_reason == "length"
    assert e.pool.num_used == 0


async def test_aborting_a_queued_request_removes_it(make_engine: Callable[..., Engine]) -> None:
    e = make_engine(max_num_seqs=1)
    running = e.generate([1, 2, 3], SamplingParams(max_tokens=10_000, ignore_eos=True))
    first = await running.__anext__()
    assert first.num_output_tokens == 1
    queued = e.add_request([4, 5, 6], SamplingParams(max_tokens=5))
    await asyncio.sleep(0.02)
    assert [r.request_id for r in e.scheduler.waiting] == [queued]
    e.abort(queued)
    assert not e.scheduler.waiting and e.request(queued) is None
    await running.aclose()
    assert e.pool.num_used == 0
    e.pool.check_integrity()


class FailOnTransfersRunner(ModelRunner):
    """A device of 2 blocks with a host tier; the first step that has to copy KV fails."""

    name = "failing-transfers"

    def __init__(self) -> None:
        self.failed = False

    def kv_capacity_blocks(self, block_size: int) -> int:
        return 2

    def host_kv_capacity_blocks(self, block_size: int) -> int:
        return 8

    async def execute(self, batch: StepBatch) -> list[int | None]:
        if batch.transfers and not self.failed:
            self.failed = True
            raise RuntimeError("copy engine lost")
        return [5 if c.sample else None for c in batch.chunks]


async def test_a_step_failing_with_kv_copies_forgets_what_they_carried(make_engine: Callable[..., Engine]) -> None:
    e = make_engine(runner=FailOnTransfersRunner(), kv_blocks=2)
    await collect(e, list(range(20)), SamplingParams(max_tokens=1))  # caches one full block
    # This one evicts it into the host tier: the step that carries the offload fails.
    *_, last = await collect(e, list(range(100, 120)), SamplingParams(max_tokens=1))
    assert last.finish_reason == "error" and "copy engine lost" in (last.error or "")
    assert e.pool.num_host_cached == 0  # the offloaded copy is not trusted
    *_, last = await collect(e, list(range(20)), SamplingParams(max_tokens=1))
    assert last.finish_reason == "length" and last.num_cached_tokens == 0  # recomputed, not loaded from garbage
    e.pool.check_integrity()
