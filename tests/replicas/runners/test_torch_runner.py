"""TorchRunner on hand-built steps, checked against the transformers model run directly."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from replicas.config import ReplicaConfig  # noqa: E402
from replicas.engine.request import Request, SamplingParams  # noqa: E402
from replicas.runners.base import ScheduledChunk, StepBatch  # noqa: E402
from replicas.runners.kv_cache import KVLayout  # noqa: E402
from replicas.runners.step_metadata import StepMetadata  # noqa: E402
from replicas.runners.torch_runner import TorchRunner  # noqa: E402

BS = 16


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path) -> TorchRunner:
    r = TorchRunner(str(tiny_model_dir), kv_blocks=64)
    assert r.kv_capacity_blocks(BS) == 64
    return r


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: Path):  # noqa: ANN201
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _request(rid: str, prompt: list[int], blocks: list[int], computed: int = 0) -> Request:
    req = Request(rid, prompt, SamplingParams(max_tokens=8, temperature=0.0))
    req.block_ids, req.num_computed_tokens = blocks, computed
    return req


def test_packed_mixed_step_matches_full_forward(runner: TorchRunner, hf_model) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (37, 21, 9, 50)]
    # Scrambled, non-contiguous block tables: the runner must follow them, not assume order.
    a = _request("a", prompts[0], [7, 3, 12])
    b = _request("b", prompts[1], [20, 5])
    c = _request("c", prompts[2], [30])
    d = _request("d", prompts[3], [41, 40, 9, 2])
    # Step 1: a's first chunk (no sampling), b, c and d prefilled whole.
    out = runner.execute_sync(StepBatch([ScheduledChunk(a, 20, False), ScheduledChunk(b, 21, True),
                                         ScheduledChunk(c, 9, True), ScheduledChunk(d, 50, True)]))
    assert out[0] is None and all(isinstance(t, int) for t in out[1:])
    a.num_computed_tokens = 20
    for req, tok in ((b, out[1]), (c, out[2]), (d, out[3])):
        req.num_computed_tokens = req.num_prompt_tokens
        req.output_token_ids.append(tok)
    # Step 2: a's second chunk over its cached first part, three decodes with different context lengths.
    step = runner.pack(StepBatch([ScheduledChunk(b, 1, True), ScheduledChunk(a, 17, True),
                                  ScheduledChunk(d, 1, True), ScheduledChunk(c, 1, True)]))
    logits = runner.forward_logits(step)
    by_request = dict(zip(step.request_ids, logits, strict=True))
    with torch.inference_mode():
        for req in (a, b, c, d):
            full = hf_model(torch.tensor([req.all_token_ids])).logits[0, -1]
            torch.testing.assert_close(by_request[req.request_id], full, atol=2e-4, rtol=2e-4)
    # Step 1's greedy tokens were the argmax of the full forward too.
    with torch.inference_mode():
        assert hf_model(torch.tensor([prompts[1]])).logits[0, -1].argmax().item() == out[1]


def test_equal_length_fresh_prompts_attend_in_one_batched_call(runner: TorchRunner, hf_model) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(5)
    # Three fresh 24-token prompts (one batched causal call), given out of order between a 13-token prompt and a
    # second chunk over cached context, neither of which may join the batch.
    lens = {"p": 24, "q": 13, "r": 24, "s": 24}
    reqs = {rid: _request(rid, torch.randint(3, 500, (n,), generator=g).tolist(), [20 + 2 * i, 21 + 2 * i])
            for i, (rid, n) in enumerate(lens.items())}
    t = _request("t", torch.randint(3, 500, (30,), generator=g).tolist(), [40, 41])
    batch = StepBatch([ScheduledChunk(reqs["p"], 24, True), ScheduledChunk(reqs["q"], 13, True),
                       ScheduledChunk(t, 14, True), ScheduledChunk(reqs["r"], 24, True),
                       ScheduledChunk(reqs["s"], 24, True)])
    runner.execute_sync(StepBatch([ScheduledChunk(t, 16, False)]))  # t's first 16 tokens into the cache
    t.num_computed_tokens = 16
    step = runner.pack(batch)
    meta = StepMetadata.build(step.spans, 16, "cpu")
    assert [meta.fresh_run(i, None) for i in range(len(meta.prefills))] == [1, 3, 2, 1, 1]
    logits = runner.forward_logits(step)
    by_request = dict(zip(step.request_ids, logits, strict=True))
    with torch.inference_mode():
        for req in [*reqs.values(), t]:
            full = hf_model(torch.tensor([req.prompt_token_ids])).logits[0, -1]
            torch.testing.assert_close(by_request[req.request_id], full, atol=2e-4, rtol=2e-4)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_kernel_agrees_with_sdpa(runner: TorchRunner) -> None:
    from replicas.runners.attn_kernels import FlexKernel, SdpaKernel

    step = runner.synthetic_step([40, 33, 70], [24, 19])
    try:
        runner.kernel = SdpaKernel()
        ref = runner.forward_logits(step)
        runner.kernel = FlexKernel(compile=False, pad=32)
        got = runner.forward_logits(step)
    finally:
        runner.kernel = SdpaKernel()
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("start", [16, 19])  # earlier context ending at a block boundary, and inside a block
def test_chunk_after_context_merges_two_attentions_like_one_masked_call(runner: TorchRunner, start: int,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from replicas.runners.attn_kernels import SdpaKernel

    prompt = torch.randint(3, 500, (start + 30,), generator=torch.Generator().manual_seed(start)).tolist()
    req = _request(f"ctx{start}", prompt, [9, 2, 14, 6])  # scrambled
    runner.execute_sync(StepBatch([ScheduledChunk(req, start, False)]))
    req.num_computed_tokens = start
    step = runner.pack(StepBatch([ScheduledChunk(req, 30, True)]))
    calls = []
    merged = SdpaKernel._context_then_causal
    monkeypatch.setattr(SdpaKernel, "_context_then_causal", lambda *a: calls.append(1) or merged(*a))
    kernel = SdpaKernel()
    monkeypatch.setattr(runner, "kernel", kernel)
    got = runner.forward_logits(step)
    assert len(calls) == 2  # one per layer
    kernel._lse = None  # the masked single call
    torch.testing.assert_close(got, runner.forward_logits(step), atol=1e-5, rtol=1e-5)
    assert len(calls) == 2


def test_block_table_must_cover_the_step(runner: TorchRunner) -> None:
    short = _request("short", list(range(3, 40)), [1])
    with pytest.raises(ValueError, match="does not cover"):
        runner.pack(StepBatch([ScheduledChunk(short, 37, True)]))
    outside = _request("outside", list(range(3, 10)), [64])
    with pytest.raises(ValueError, match="does not cover"):
        runner.pack(StepBatch([ScheduledChunk(outside, 7, True)]))
    decode = _request("decode", list(range(3, 20)), [1, 64], computed=17)  # writes into a block outside the pool
    decode.output_token_ids.append(5)
    with pytest.raises(ValueError, match="does not cover"):
        runner.pack(StepBatch([ScheduledChunk(decode, 1, True)]))
    done = _request("done", list(range(3, 10)), [1], computed=7)
    with pytest.raises(ValueError, match="cannot compute"):
        runner.pack(StepBatch([ScheduledChunk(done, 1, True)]))


async def _execute_watched(runner: TorchRunner, prompt_len: int) -> tuple[list[int], int]:
    """Run one step of a ``prompt_len``-token prefill; the threads ``run_step`` ran on and the loop's ticks."""
    threads: list[int] = []
    original = runner.run_step

    def spy(step):  # noqa: ANN001, ANN202
        threads.append(threading.get_ident())
        return original(step)

    runner.run_step = spy  # type: ignore[method-assign]
    try:
        req = _request("w", list(range(5, 5 + prompt_len)), [3, 4, 5, 6][: -(-prompt_len // BS)])
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        out = await runner.execute(StepBatch([ScheduledChunk(req, prompt_len, True)]))
        task.cancel()
    finally:
        del runner.run_step
    assert isinstance(out[0], int)
    return threads, ticks


async def test_large_steps_run_in_a_worker_thread(runner: TorchRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "inline_max_tokens", 8)
    threads, ticks = await _execute_watched(runner, 40)
    assert threads and threads[0] != threading.get_ident()
    assert ticks > 0  # the loop kept running while the step ran


async def test_small_fast_cpu_steps_run_on_the_loop_after_yielding(runner: TorchRunner,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.inline_max_tokens == 256  # CPU default: up to a full batch of decodes (max_num_seqs)
    monkeypatch.setattr(runner, "small_step_s", None)
    monkeypatch.setattr(runner, "inline_max_step_s", 10.0)  # "fast" whatever the machine's load (no timing here)
    threads, _ = await _execute_watched(runner, 4)
    assert threads[0] != threading.get_ident()  # nothing measured yet: the thread, timing the step
    assert runner.small_step_s is not None and runner.small_step_s < runner.inline_max_step_s
    threads, ticks = await _execute_watched(runner, 4)
    assert threads == [threading.get_ident()]  # measured fast: on the loop
    assert ticks >= 1  # it yielded once first, so handlers could send the previous step's tokens


async def test_slow_small_steps_keep_the_thread(runner: TorchRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bigger model on a CPU: decode steps of hundreds of ms must not hold health probes and new requests.
    monkeypatch.setattr(runner, "small_step_s", 0.5)
    threads, ticks = await _execute_watched(runner, 4)
    assert threads[0] != threading.get_ident() and ticks > 0


def test_kv_sizing_and_describe(tiny_model_dir: Path) -> None:
    cfg = ReplicaConfig(model=str(tiny_model_dir), runner="torch", kv_cache_memory=3 << 20)
    r = TorchRunner.from_config(cfg)
    layout = KVLayout.from_model_config(r.model.config, BS, torch.float32)
    assert layout.bytes_per_block == 2 * 2 * BS * 2 * 16 * 4  # K+V, 2 layers, 2 KV heads of 16, fp32
    assert r.kv_capacity_blocks(BS) == (3 << 20) // layout.bytes_per_block
    info = r.describe()
    assert info["kernel"] == "sdpa" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["kv_blocks"] == r.cache.num_blocks and r.cache.nbytes <= 3 << 20
    assert r.max_model_len == 2048
    with pytest.raises(ValueError, match="block size"):
        r.kv_capacity_blocks(32)
    r.close()


def test_bad_device_dtype_and_kernel(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="CUDA is not available|CUDA device"):
        TorchRunner(str(tiny_model_dir), device="cuda:0" if not torch.cuda.is_available() else "cuda:99")
    with pytest.raises(ValueError, match="unsupported device"):
        TorchRunner(str(tiny_model_dir), device="mps")
    with pytest.raises(ValueError, match="unknown dtype"):
        TorchRunner(str(tiny_model_dir), dtype="int3")
    r = TorchRunner(str(tiny_model_dir), kv_blocks=8, attention_kernel="flash_attn")
    with pytest.raises(ValueError, match="flash_attn is not available"):
        r.kv_capacity_blocks(BS)


def _tiny_variant(base: Path, out: Path, kind: str) -> Path:
    """A random-weight Mistral (sliding window), Qwen2 (sliding window on its upper layers) or Qwen3 (q/k norms)
    sharing the tiny tokenizer."""
    from transformers import (
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  initializer_range=0.3, tie_word_embeddings=False)
    torch.manual_seed(1)
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=8))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=True, sliding_window=8, max_window_layers=1))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16))
    model.save_pretrained(out)
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out


@pytest.mark.parametrize("kind", ["mistral", "qwen2", "qwen3"])
def test_other_architectures_decode_like_generate(tiny_model_dir: Path, tmp_path: Path, kind: str) -> None:
    from transformers import AutoModelForCausalLM

    folder = _tiny_variant(tiny_model_dir, tmp_path / kind, kind)
    r = TorchRunner(str(folder), kv_blocks=16)
    r.kv_capacity_blocks(BS)
    assert r.describe()["forward"] == "layerwise"  # checked identical to the model's own forward at start
    prompt = torch.randint(3, 500, (19,), generator=torch.Generator().manual_seed(5)).tolist()
    req = _request("x", prompt, [4, 9, 1])
    for _ in range(12):  # prefill in two chunks, then decode token by token
        n = 11 if req.num_computed_tokens == 0 else req.num_tokens - req.num_computed_tokens
        tok = r.execute_sync(StepBatch([ScheduledChunk(req, n, req.num_computed_tokens + n == req.num_tokens)]))[0]
        req.num_computed_tokens += n
        if tok is not None:
            req.output_token_ids.append(tok)
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    gen = ref.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                       max_new_tokens=len(req.output_token_ids), eos_token_id=None, pad_token_id=0)
    assert req.output_token_ids == gen[0, len(prompt):].tolist()
    r.close()


def test_cuda_sizing_leaves_room_and_refuses_what_does_not_fit() -> None:
    from replicas.runners.torch_setup import cuda_kv_blocks

    layout = KVLayout(num_layers=30, kv_heads=3, head_dim=64, block_size=BS, dtype=torch.bfloat16)
    free, peak = 10 << 30, 1 << 30
    fit = cuda_kv_blocks(layout, free, peak, 0.9, None, None)
    usable = int(free * 0.9) - peak
    # The pool plus the worst-case attention gathers (2 layers' worth) fit in what the warm-up left.
    assert fit == (usable * 30 // 32) // layout.bytes_per_block
    assert fit * layout.bytes_per_block * 32 / 30 <= usable
    assert cuda_kv_blocks(layout, free, peak, 0.9, 100, None) == 100
    assert cuda_kv_blocks(layout, free, peak, 0.9, None, 1 << 30) == (1 << 30) // layout.bytes_per_block
    with pytest.raises(ValueError, match="does not fit"):
        cuda_kv_blocks(layout, free, peak, 0.9, fit + 1, None)
    with pytest.raises(ValueError, match="does not fit"):
        cuda_kv_blocks(layout, free, peak, 0.9, None, 20 << 30)
    assert cuda_kv_blocks(layout, 1 << 30, 2 << 30, 0.9, None, None) == 0  # activations alone exceed the budget


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_auto_kernel_choice_times_candidates_and_drops_broken_ones(runner: TorchRunner) -> None:
    from replicas.runners.kernel_choice import _time_kernels

    kernel = runner.kernel
    try:
        timings, errors = _time_kernels(runner, ["flash_attn", "flex", "sdpa"])
    finally:
        runner.kernel = kernel
    assert set(timings) == {"flex", "sdpa"} and all(t > 0 for t in timings.values())
    assert "flash_attn" in errors  # not installed here: skipped, not fatal


def test_one_token_prompt_slice_does_not_sample(runner: TorchRunner, hf_model) -> None:  # noqa: ANN001
    prompt = torch.randint(3, 500, (10,), generator=torch.Generator().manual_seed(8)).tolist()
    e = _request("e", prompt, [50])
    f = _request("f", prompt[:6], [51])
    out = runner.execute_sync(StepBatch([ScheduledChunk(f, 6, True), ScheduledChunk(e, 1, False)]))
    assert out[1] is None and isinstance(out[0], int)
    e.num_computed_tokens = 1
    tok = runner.execute_sync(StepBatch([ScheduledChunk(e, 9, True)]))[0]
    with torch.inference_mode():
        assert tok == hf_model(torch.tensor([prompt])).logits[0, -1].argmax().item()
