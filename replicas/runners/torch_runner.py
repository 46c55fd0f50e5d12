"""`TorchRunner`: a transformers causal LM driven by the engine, one packed forward pass per step.

Contract (beyond ``ModelRunner``): the model runs with our paged attention (``attn_implementation=
"foresight_paged"``) and HF's own cache off; a step's tokens are packed as batch 1 (decodes first, longest
context first, then multi-token chunks), with explicit position ids and no padding; logits are computed only
for the rows that sample; sampling happens on the device. The forward walks the model's own modules
(``layerwise``) when, checked at start, that gives exactly the logits of the model's forward, which it skips the
wrappers of; otherwise it calls the model. Steps never overlap. A step runs in one worker thread,
so the event loop stays free, except a small and fast step on the CPU (at most ``inline_max_tokens`` new tokens,
i.e. a decode step, while such steps take under ``inline_max_step_s``): that one runs on the event loop after
yielding once, because on a CPU the forward pass is Python that needs the GIL, and handing it to a thread only
makes the two threads wait on each other (measured: ~25% more decode throughput on the tiny model). Slow steps
(a bigger model on a CPU) stay in the thread so that health probes and new requests are never held for long. The KV pool is sized once, in ``kv_capacity_blocks``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from replicas.engine.request import Request, SamplingParams
from replicas.runners.base import ModelRunner, StepBatch
from replicas.runners.decode_reuse import DecodeReference
from replicas.runners.kernel_choice import choose_kernel
from replicas.runners.kv_cache import HostKVCache, KVLayout, PagedKVCache
from replicas.runners.layerwise import LayerwiseForward, matches
from replicas.runners.paged_attention import ATTN_NAME, STEP_KWARG, PagedStep
from replicas.runners.sampling import Sampler
from replicas.runners.step_metadata import DecodeContext, SeqSpan, StepMetadata
from replicas.runners.torch_setup import cpu_kv_blocks, cuda_kv_blocks, resolve_device, resolve_dtype

if TYPE_CHECKING:
    from replicas.config import ReplicaConfig

log = logging.getLogger(__name__)

DEFAULT_DECODE_CONTEXT_MEMORY = 64 << 20


@dataclass
class PackedStep:
    """A step's inputs in packed order, snapshotted on the event loop (requests may change meanwhile)."""

    num_chunks: int
    token_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    spans: list[SeqSpan] = field(default_factory=list)
    keep_rows: list[int] = field(default_factory=list)  # packed row whose logits sample, per sampling row
    sample_chunks: list[int] = field(default_factory=list)  # chunk index of each sampling row
    params: list[SamplingParams] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    meta: StepMetadata | None = None  # built with the step by ``pack`` (None: ``forward_logits`` builds it)
    position_ids: torch.Tensor | None = None  # ``positions`` as a tensor on the device, likewise


def _first(entry: tuple) -> int:
    return entry[0]


def _chunk_order(entry: tuple) -> tuple[bool, int]:
    span: SeqSpan = entry[3]
    return span.start > 0, span.num_new


def _token_slice(request: Request, start: int, end: int) -> list[int]:
    prompt, n = request.prompt_token_ids, request.num_prompt_tokens
    if start >= n:
        return request.output_token_ids[start - n:end - n]
    if end <= n:
        return prompt[start:end]
    return prompt[start:] + request.output_token_ids[:end - n]


class TorchRunner(ModelRunner):
    name = "torch"

    def __init__(self, model_path: str, *, device: str = "cpu", dtype: str = "auto", attention_kernel: str = "auto",
                 kv_blocks: int | None = None, kv_cache_memory: int | None = None, host_kv_memory: int = 0,
                 gpu_memory_fraction: float = 0.9, max_batched_tokens: int = 8192, max_num_seqs: int = 256,
                 inline_max_tokens: int | None = None, inline_max_step_s: float = 0.02,
                 decode_context_memory: int | None = None, layerwise: bool = True) -> None:
        from transformers import AutoModelForCausalLM

        self.model_path = str(model_path)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        load_kwargs: dict[str, object] = {"attn_implementation": ATTN_NAME, "dtype": self.dtype}
        if self.device.type == "cuda":
            load_kwargs["device_map"] = str(self.device)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, **load_kwargs).to(self.device).eval()
        self.max_model_len = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self.attention_kernel = attention_kernel
        self.kv_blocks, self.kv_cache_memory = kv_blocks, kv_cache_memory
        self.host_kv_memory = host_kv_memory
        self.host_cache: HostKVCache | None = None
        self.gpu_memory_fraction = gpu_memory_fraction
        self.max_batched_tokens, self.max_num_seqs = max_batched_tokens, max_num_seqs
        self.sampler = Sampler(self.device)
        self.cache: PagedKVCache | None = None
        self.kernel = None
        self.kernel_report: dict[str, object] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-runner")
        # On a GPU the loop must stay free while kernels run; a CPU decode step is short and GIL-bound.
        self.inline_max_tokens = (inline_max_tokens if inline_max_tokens is not None
                                  else (max_num_seqs if self.device.type == "cpu" else 0))
        self.inline_max_step_s = inline_max_step_s
        self.small_step_s: float | None = None  # moving average of small steps' durations (decides inline)
        self._decode_ref: DecodeReference | None = None  # the last all-decode step, for the next one to reuse
        # Bytes of decode groups' K/V kept across steady-decode steps (``DecodeContext``): on a CPU the per-step
        # gather is ~10% of a small model's decode forward; on a GPU the gather is cheap and memory is the pool's.
        self.decode_context_memory = (decode_context_memory if decode_context_memory is not None
                                      else (DEFAULT_DECODE_CONTEXT_MEMORY if self.device.type == "cpu" else 0))
        self.reused_steps = 0  # steps packed by advancing the previous one
        self.reused_block_starts = 0  # requests that started a KV block in those steps
        self.layerwise = layerwise  # may the forward skip the model's wrappers (``layerwise``), once checked
        self._layerwise: LayerwiseForward | None = None

    @classmethod
    def from_config(cls, cfg: ReplicaConfig) -> TorchRunner:
        from replicas.models import resolve_model

        extra = cfg.extra or {}
        return cls(str(resolve_model(cfg.model)), device=cfg.device, dtype=cfg.dtype,
                   attention_kernel=str(extra.get("attention_kernel", "auto")), kv_blocks=cfg.kv_blocks,
                   kv_cache_memory=cfg.kv_cache_memory, host_kv_memory=cfg.host_kv_memory,
                   gpu_memory_fraction=float(extra.get("gpu_memory_fraction", 0.9)),  # type: ignore[arg-type]
                   max_batched_tokens=cfg.max_batched_tokens, max_num_seqs=cfg.max_num_seqs,
                   decode_context_memory=_opt_int(extra.get("decode_context_memory")))

    # -- start-up -------------------------------------------------------------------------------------------

    def kv_capacity_blocks(self, block_size: int) -> int:
        if self.cache is not None:
            if self.cache.layout.block_size != block_size:
                raise ValueError(f"KV cache was built for block size {self.cache.layout.block_size}, not {block_size}")
            return self.cache.num_blocks
        layout = KVLayout.from_model_config(self.model.config, block_size, self.dtype)
        if self.device.type == "cuda":
            num_blocks = self._cuda_blocks(layout)
        else:
            num_blocks = cpu_kv_blocks(layout, self.kv_blocks, self.kv_cache_memory)
        if num_blocks < 1:
            raise ValueError(f"no KV block fits ({layout.bytes_per_block} bytes each): raise the KV memory")
        self.cache = PagedKVCache(layout, num_blocks, self.device)
        self.kernel, self.kernel_report = choose_kernel(self, self.attention_kernel)
        self._choose_forward(block_size)
        self.run_step(self.synthetic_step([2 * block_size], [block_size + 1]))  # warm-up: first real step is not slow
        log.info("torch runner: %s on %s (%s), kernel %s, %d KV blocks (%.1f MiB)", self.model_path, self.device,
                 self.dtype, self.kernel.name, num_blocks, self.cache.nbytes / 2**20)
        return num_blocks

    def _choose_forward(self, block_size: int) -> None:
        """Run the model layer by layer when that is bit-identical to its own forward on a mixed step."""
        lw = LayerwiseForward.of(self.model) if self.layerwise else None
        if lw is not None:
            step = self.synthetic_step([block_size + 3, 5], [block_size + 2])
            if matches(lambda: self._forward(step, None), lambda: self._forward(step, lw)):
                self._layerwise = lw
        log.info("torch runner: %s forward", "layer-by-layer" if self._layerwise else "the model's own")

    def host_kv_capacity_blocks(self, block_size: int) -> int:
        assert self.cache is not None, "kv_capacity_blocks must be called first"
        slots = self.cache.layout.blocks_for_bytes(self.host_kv_memory)
        if slots and self.host_cache is None:
            self.host_cache = HostKVCache(self.cache.layout, slots, pin=self.device.type == "cuda")
            log.info("torch runner: host KV tier of %d blocks (%.1f MiB)", slots, self.host_cache.nbytes / 2**20)
        return self.host_cache.num_slots if self.host_cache is not None else 0

    def _cuda_blocks(self, layout: KVLayout) -> int:
        """Warm up with the largest step on a scratch cache, then size the pool from what is free."""
        from replicas.runners.attn_kernels import SdpaKernel

        tokens = min(self.max_batched_tokens, self.max_model_len or self.max_batched_tokens)
        scratch_blocks = -(-tokens // layout.block_size)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        self.cache, self.kernel = PagedKVCache(layout, scratch_blocks, self.device), SdpaKernel()
        sampling = SamplingParams(temperature=1.0, top_p=0.9, top_k=50)
        step = self.synthetic_step([], [tokens], sampling, rows_per_prefill=min(self.max_num_seqs, tokens))
        self.run_step(step)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        self.cache, self.kernel = None, None
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.device)
        return cuda_kv_blocks(layout, free, peak, self.gpu_memory_fraction, self.kv_blocks, self.kv_cache_memory)

    def synthetic_step(self, decode_ctx: list[int], prefill_lens: list[int], sampling: SamplingParams | None = None,
                       rows_per_prefill: int = 1) -> PackedStep:
        """A step over scratch blocks (warm-up, kernel timing): random tokens, consecutive block tables (taken
        modulo the pool), one sampling row per decode and ``rows_per_prefill`` per prefill."""
        assert self.cache is not None
        bs, vocab = self.cache.layout.block_size, int(self.model.config.vocab_size)
        step = PackedStep(num_chunks=len(decode_ctx) + len(prefill_lens))
        next_block = 0
        for ctx, n in [(c, 1) for c in decode_ctx] + [(p, p) for p in prefill_lens]:
            nblk = -(-ctx // bs)
            step.spans.append(SeqSpan(ctx - n, n, [(next_block + i) % self.cache.num_blocks for i in range(nblk)]))
            next_block += nblk
            step.token_ids.extend(torch.randint(0, vocab, (n,)).tolist())
            step.positions.extend(range(ctx - n, ctx))
            rows = min(n, rows_per_prefill) if n > 1 else 1
            for r in range(rows):
                step.keep_rows.append(len(step.token_ids) - rows + r)
                step.sample_chunks.append(len(step.spans) - 1)
                step.params.append(sampling or SamplingParams(temperature=0.0))
                step.request_ids.append(f"synthetic-{len(step.request_ids)}")
        return step

    # -- steps ----------------------------------------------------------------------------------------------

    def pack(self, batch: StepBatch) -> PackedStep:
        """Snapshot ``batch`` into packed order with its attention metadata; raise on a block table that does not
        cover the step. A steady decode step reuses the previous one's packing (``decode_reuse``)."""
        assert self.cache is not None, "kv_capacity_blocks must be called before the first step"
        bs = self.cache.layout.block_size
        if self._decode_ref is not None:
            step = self._decode_ref.advance(batch, bs)
            if step is not None:
                self.reused_steps += 1
                self.reused_block_starts += self._decode_ref.block_starts
                return step
        step = self._pack(batch)
        step.meta = StepMetadata.build(step.spans, bs, self.device, self.dtype)
        self._keep_decode_contexts(step.meta)
        step.position_ids = torch.tensor(step.positions, dtype=torch.long, device=self.device)
        self._decode_ref = DecodeReference.of(batch, step)
        return step

    def _keep_decode_contexts(self, meta: StepMetadata) -> None:
        """Give each decode group a ``DecodeContext`` if its K/V, over every layer, fit in what is left of
        ``decode_context_memory`` (the buffers live as long as steady-decode reuse carries the step)."""
        assert self.cache is not None
        layout = self.cache.layout
        per_token = layout.bytes_per_block // layout.block_size  # K and V of every layer
        left = self.decode_context_memory
        for group in meta.decodes:
            need = (group.row_end - group.row_start) * group.blocks.shape[1] * layout.block_size * per_token
            if need <= left:
                group.context = DecodeContext()
                left -= need

    def _pack(self, batch: StepBatch) -> PackedStep:
        assert self.cache is not None
        bs, num_blocks = self.cache.layout.block_size, self.cache.num_blocks
        decodes, chunks = [], []
        for index, chunk in enumerate(batch.chunks):
            r, n = chunk.request, chunk.num_new_tokens
            start = r.num_computed_tokens
            end = start + n
            if n <= 0 or end > len(r.prompt_token_ids) + len(r.output_token_ids):
                raise ValueError(f"request {r.request_id}: cannot compute tokens [{start}, {end}) of {r.num_tokens}")
            nblk = -(-end // bs)
            blocks = r.block_ids[:nblk]  # a copy: the engine may change the table after this step
            # A decode's table only ever grows by the block it writes (checked); a chunk's is checked whole.
            if len(blocks) < nblk or (not 0 <= blocks[-1] < num_blocks if n == 1 else (
                    max(blocks) >= num_blocks or min(blocks) < 0)):
                raise ValueError(f"request {r.request_id}: block table {blocks} does not cover {end} tokens "
                                 f"in a pool of {num_blocks} blocks")
            (decodes if n == 1 else chunks).append((end, index, chunk, SeqSpan(start, n, blocks)))
        # Decodes first, longest context first, so that decode groups pad little; then multi-token chunks,
        # fresh prompts of equal length side by side (the attention kernel batches them).
        decodes.sort(key=_first, reverse=True)
        chunks.sort(key=_chunk_order)
        step = PackedStep(num_chunks=len(batch.chunks))
        spans, token_ids, positions = step.spans, step.token_ids, step.positions
        for end, index, chunk, span in decodes:  # the common case, kept lean: one token each
            r = chunk.request
            spans.append(span)
            token_ids.append(r.token_at(end - 1))
            positions.append(end - 1)
            if chunk.sample:  # False for a one-token slice of a prompt that the token budget cut short
                step.keep_rows.append(len(token_ids) - 1)
                step.sample_chunks.append(index)
                step.params.append(r.sampling)
                step.request_ids.append(r.request_id)
        for end, index, chunk, span in chunks:
            spans.append(span)
            token_ids.extend(_token_slice(chunk.request, span.start, end))
            positions.extend(range(span.start, end))
            if chunk.sample:
                step.keep_rows.append(len(token_ids) - 1)
                step.sample_chunks.append(index)
                step.params.append(chunk.request.sampling)
                step.request_ids.append(chunk.request.request_id)
        return step

    def forward_logits(self, step: PackedStep) -> torch.Tensor:
        """One packed forward pass (writes the step's K/V into the cache) -> logits ``[sampling rows, vocab]``."""
        return self._forward(step, self._layerwise)

    def _forward(self, step: PackedStep, layerwise: LayerwiseForward | None) -> torch.Tensor:
        assert self.cache is not None and self.kernel is not None
        dev = self.device
        meta = step.meta or StepMetadata.build(step.spans, self.cache.layout.block_size, dev, self.dtype)
        positions = (step.position_ids if step.position_ids is not None
                     else torch.tensor(step.positions, dtype=torch.long, device=dev))
        # Every row samples (a decode step): transformers' 0 means all rows, with no index tensor to build and apply.
        keep: int | torch.Tensor = (0 if len(step.keep_rows) == len(step.token_ids)
                                    else torch.tensor(step.keep_rows, dtype=torch.long, device=dev))
        ids = torch.tensor(step.token_ids, dtype=torch.long, device=dev)[None]
        paged = {STEP_KWARG: PagedStep(meta, self.cache, self.kernel)}
        with torch.inference_mode():
            if layerwise is not None:
                return layerwise(ids, positions[None], keep, **paged)[0]
            out = self.model(input_ids=ids, position_ids=positions[None], logits_to_keep=keep, use_cache=False, **paged)
        return out.logits[0]

    def run_step(self, step: PackedStep) -> list[int | None]:
        """Forward + sampling, synchronously (the worker thread's job; tests call it directly)."""
        logits = self.forward_logits(step)
        with torch.inference_mode():
            tokens = self.sampler.sample(logits, step.params, step.request_ids)
        results: list[int | None] = [None] * step.num_chunks
        for index, token in zip(step.sample_chunks, tokens, strict=True):
            results[index] = token
        return results

    def run_transfers(self, batch: StepBatch) -> None:
        """The step's KV copies between the device and the host tier, before its forward pass."""
        t = batch.transfers
        if t:
            assert self.host_cache is not None and self.cache is not None, "transfers without a host tier"
            with torch.inference_mode():
                self.host_cache.run(self.cache, t.offloads, t.loads)

    def _transfer_and_run(self, batch: StepBatch, step: PackedStep) -> list[int | None]:
        self.run_transfers(batch)
        return self.run_step(step)

    def execute_sync(self, batch: StepBatch) -> list[int | None]:
        return self._transfer_and_run(batch, self.pack(batch))

    async def execute(self, batch: StepBatch) -> list[int | None]:
        small = batch.num_tokens <= self.inline_max_tokens
        inline = small and self.small_step_s is not None and self.small_step_s < self.inline_max_step_s
        if inline:
            await asyncio.sleep(0)  # let the handlers send the previous step's tokens before the loop blocks
        step = self.pack(batch)
        t0 = time.perf_counter()
        if inline:
            out = self._transfer_and_run(batch, step)
        else:
            out = await asyncio.get_running_loop().run_in_executor(self._executor, self._transfer_and_run, batch, step)
        if small:
            took = time.perf_counter() - t0
            self.small_step_s = took if self.small_step_s is None else 0.8 * self.small_step_s + 0.2 * took
        return out

    def on_idle(self) -> None:
        self._decode_ref = None  # nothing to continue; frees the kept decode contexts

    def release(self, request_id: str) -> None:
        self.sampler.release(request_id)

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {"runner": self.name, "model": self.model_path, "device": str(self.device),
                                   "dtype": str(self.dtype).removeprefix("torch."),
                                   "kernel": self.kernel.name if self.kernel else None, **self.kernel_report}
        if self.cache is not None:
            info.update(kv_blocks=self.cache.num_blocks, block_size=self.cache.layout.block_size,
                        decode_context_memory=self.decode_context_memory,
                        forward="layerwise" if self._layerwise is not None else "transformers",
                        kv_cache_bytes=self.cache.nbytes)
        if self.host_cache is not None:
            info.update(host_kv_blocks=self.host_cache.num_slots, host_kv_bytes=self.host_cache.nbytes)
        return info

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]
