"""The torch runner inside the real engine: continuous batching must not change a single greedy token.

32 prompts of different lengths (some sharing prefixes) arrive while others decode; a small KV pool forces
preemption and a small token budget forces chunked prefill. Every output must equal ``model.generate`` run on
that prompt alone.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from replicas.config import ReplicaConfig  # noqa: E402
from replicas.engine.engine import Engine, StepStats  # noqa: E402
from replicas.engine.request import Request, SamplingParams  # noqa: E402
from replicas.engine.tokenizer import load_tokenizer  # noqa: E402
from replicas.runners.torch_runner import TorchRunner  # noqa: E402


class StepWatch:
    """Engine listener: counts steps and what they did; wakes waiters after each step."""

    def __init__(self) -> None:
        self.steps = 0
        self.preempted = 0
        self.max_seqs = 0
        self.changed = asyncio.Condition()

    def on_step(self, stats: StepStats) -> None:
        self.steps += 1
        self.preempted += stats.num_preempted
        self.max_seqs = max(self.max_seqs, stats.num_seqs)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_steps(self, n: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.steps >= n)

    def on_admit(self, req: Request, cached_tokens: int) -> None:
        pass

    def on_finish(self, req: Request) -> None:
        pass


def make_prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(7)
    shared_a = [rng.randrange(3, vocab) for _ in range(40)]
    shared_b = [rng.randrange(3, vocab) for _ in range(33)]
    prompts = []
    for i in range(32):
        tail = [rng.randrange(3, vocab) for _ in range(rng.randrange(1, 60))]
        if i % 4 == 1:
            prompts.append(shared_a + tail)
        elif i % 4 == 2:
            prompts.append(shared_b + tail[:10])
        else:
            prompts.append(tail + [rng.randrange(3, vocab) for _ in range(i % 7)])
    return prompts


def reference_outputs(model_dir: Path, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    with torch.inference_mode():
        for prompt, n in zip(prompts, lengths, strict=True):
            ids = torch.tensor([prompt])
            # eos_token_id=None: generation goes on past EOS like our ignore_eos (min_new_tokens would instead
            # forbid EOS, a different distribution).
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                 eos_token_id=None, pad_token_id=0)
            outs.append(gen[0, len(prompt):].tolist())
            assert len(outs[-1]) == n
    return outs


@pytest.mark.slow
async def test_continuous_batching_is_token_identical_to_generate(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    prompts = make_prompts(tokenizer.vocab_size)
    lengths = [6 + (i * 5) % 19 for i in range(len(prompts))]
    # The whole budget while others decode (no --decode-step-tokens cap): more blocks in use at once, so the
    # small pool preempts.
    cfg = ReplicaConfig(model=str(tiny_model_dir), runner="torch", kv_blocks=24, max_num_seqs=10,
                        max_batched_tokens=48, decode_step_tokens=48)
    runner = TorchRunner.from_config(cfg)
    engine = Engine(cfg, runner, tokenizer)
    watch = StepWatch()
    engine.listeners.append(watch)
    results: dict[int, list[int]] = {}
    cached: dict[int, int] = {}

    async def one(i: int) -> None:
        await watch.wait_steps(i // 2 * 3)  # staggered arrivals: later requests join while others decode
        sampling = SamplingParams(max_tokens=lengths[i], temperature=0.0, ignore_eos=True)
        tokens: list[int] = []
        async for out in engine.generate(prompts[i], sampling):
            tokens.extend(out.new_token_ids)
            cached[i] = out.num_cached_tokens
            assert out.error is None, out.error
        results[i] = tokens

    try:
        await engine.start()
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(prompts)))), timeout=240)
    finally:
        await engine.stop()
        runner.close()

    expected = reference_outputs(tiny_model_dir, prompts, lengths)
    mismatched = [i for i in range(len(prompts)) if results[i] != expected[i]]
    assert not mismatched, {i: (results[i], expected[i]) for i in mismatched}
    # The scenario really exercised what it claims to.
    assert watch.preempted > 0, "the small KV pool never forced a preemption"
    assert watch.max_seqs > 4, "requests never shared a step"
    assert any(len(p) > cfg.max_batched_tokens for p in prompts), "no prompt needed chunked prefill"
    assert sum(1 for n in cached.values() if n > 0) >= 4, "the shared prefixes were never served from the cache"
    assert runner.reused_steps > 0, "no steady decode step reused the previous packing"
    assert runner.reused_block_starts > 0, "no reused step had a request start a KV block"


@pytest.mark.slow
async def test_prefixes_reloaded_from_the_host_tier_are_token_identical(tiny_model_dir: Path) -> None:
    """A device pool too small to keep any finished prompt: every shared prefix comes back from the host tier,
    and the greedy outputs still equal ``model.generate``."""
    tokenizer = load_tokenizer(tiny_model_dir)
    rng = random.Random(11)
    vocab = tokenizer.vocab_size
    stems = [[rng.randrange(3, vocab) for _ in range(37)] for _ in range(3)]
    prompts = [stems[i % 3] + [rng.randrange(3, vocab) for _ in range(1 + i % 5)] for i in range(9)]
    lengths = [4 + i % 3 for i in range(len(prompts))]
    cfg = ReplicaConfig(model=str(tiny_model_dir), runner="torch", kv_blocks=4, max_num_seqs=1,
                        max_batched_tokens=64, host_kv_memory=16 * 2**20)
    runner = TorchRunner.from_config(cfg)
    engine = Engine(cfg, runner, tokenizer)
    results: list[list[int]] = []
    cached: list[int] = []
    try:
        await engine.start()
        for prompt, n in zip(prompts, lengths, strict=True):  # one at a time: each evicts the one before
            tokens: list[int] = []
            async for out in engine.generate(prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)):
                assert out.error is None, out.error
                tokens.extend(out.new_token_ids)
                cached_tokens = out.num_cached_tokens
            results.append(tokens)
            cached.append(cached_tokens)
    finally:
        await engine.stop()
        runner.close()

    assert results == reference_outputs(tiny_model_dir, prompts, lengths)
    assert engine.pool.num_loaded > 0 and engine.pool.num_offloaded > 0, "the host tier was never used"
    assert all(c >= 32 for c in cached[3:]), f"later prompts should reuse their stem: {cached}"
    engine.pool.check_integrity()
