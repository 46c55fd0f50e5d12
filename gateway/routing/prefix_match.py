"""Prefix matching for policies: how much of a request's prompt each replica already holds.

``PrefixMatcher`` hides the index mode from the policies (``prefix`` and ``foresight`` share it):

- ``approx`` (default): character-chunk hash chains of the rendered prompt (``prefix_index_approx``) in a
  ``PrefixIndex`` recorded on dispatch and shared with peer gateways through the state store
  (``prefix_index_shared``). The per-replica LRU follows the replica's reported KV size when a load report gives
  it (``(kv_blocks_total + kv_host_blocks_total) * block_size`` tokens: device and host tier; in chunks at the
  observed characters per token).
- ``precise``: the replicas' own block ids from their KV events (``kv_events_consumer``), matched against the
  DESIGN.md section 2 hashes of the prompt's tokens (``prefix_index_precise``); needs ``tokenizer=PATH``.

``match`` returns, per candidate replica, the fraction of the prompt it holds (0..1); policies turn it into tokens.
Options (``--policy-opt``): ``prefix_mode``, ``chunk_chars`` (128), ``index_capacity`` (chunks per replica before
a load report says better, 65536), ``share_delay`` (s, 0.005: how long a shared-index delta waits to be batched),
``share_interval`` (s, 0.1: the first retry backoff when the store fails), ``tokenizer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.routing.base import PolicyContext, ReplicaView, RequestView
from gateway.routing.prefix_index import PrefixIndex
from gateway.routing.prefix_index_approx import chunk_hashes
from gateway.routing.prefix_index_shared import SharedApproxIndex

KEY = "prefix_keys"  # request.scratch slot: the request's chain hashes, computed once


class PrefixMatcher:
    def __init__(self, ctx: PolicyContext) -> None:
        opts = ctx.options
        self.mode = opts.get("prefix_mode", "approx")
        if self.mode not in ("approx", "precise"):
            raise ValueError(f"prefix_mode must be approx or precise, got {self.mode!r}")
        self.chunk_chars = int(opts.get("chunk_chars", 128))
        self.block_size = ctx.block_size
        self.chars_per_token = 4.0  # refined from completed requests (observe)
        self._kv_seen: dict[str, int] = {}  # replica -> KV tokens its LRU was sized for
        self._observed = 0
        if self.mode == "approx":
            self.index = PrefixIndex(default_capacity=int(opts.get("index_capacity", 65536)))
            self.shared = SharedApproxIndex(self.index, ctx.store, ctx.gateway_id,
                                            interval=float(opts.get("share_interval", 0.1)),
                                            flush_delay=float(opts.get("share_delay", 0.005)))
            self.precise = None
        else:
            from gateway.routing.kv_events_consumer import KVEventsConsumer
            from gateway.routing.prompt_blocks import PromptBlocks

            self.blocks = PromptBlocks(opts["tokenizer"], ctx.block_size, ctx.hash_seed)
            self.precise = KVEventsConsumer(ctx, capacity=int(opts.get("index_capacity", 1 << 20)))
            self.index = self.precise.index.index
            self.shared = None

    def keys(self, request: RequestView) -> list[int]:
        keys = request.scratch.get(KEY)
        if keys is None:
            if self.mode == "approx":
                keys = chunk_hashes(request.prompt_text, request.model, self.chunk_chars)
            else:
                count, keys = self.blocks.tokens_and_ids(request.prompt_text)
                request.scratch["prompt_token_count"] = count
            request.scratch[KEY] = keys
        return keys

    def follow_capacity(self, replicas: Sequence[ReplicaView]) -> None:
        """Size each replica's approximate LRU like its KV cache (cheap: only when the reported size changes)."""
        for r in replicas:
            load = r.load
            if load is not None:
                total = int(load.get("kv_blocks_total", 0) or 0) + int(load.get("kv_host_blocks_total", 0) or 0)
                if total:
                    self.set_replica_kv(r.id, total * int(load.get("block_size", self.block_size) or self.block_size))

    def set_replica_kv(self, replica_id: str, kv_tokens: int) -> None:
        """The replica's KV cache holds ``kv_tokens`` tokens: bound its approximate LRU to as many characters."""
        if self.mode != "approx" or self._kv_seen.get(replica_id) == kv_tokens:
            return
        self._kv_seen[replica_id] = kv_tokens
        self.index.set_capacity(replica_id, int(kv_tokens * self.chars_per_token / self.chunk_chars))

    def match(self, request: RequestView, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        """Fraction of the prompt cached per replica (absent: 0)."""
        keys = self.keys(request)
        if not keys:
            return {}
        if self.precise is not None:
            self.precise.watch(replicas)
        matched = self.index.match(keys, [r.id for r in replicas])
        request.scratch["matched_blocks"] = matched  # per replica, for the trace (foresight.tracing_web.on_routed)
        if self.mode == "approx":
            # Only full chunks are hashed: scale by the hashed share of the text.
            covered = len(keys) * self.chunk_chars / max(1, len(request.prompt_text))
        else:
            covered = len(keys) * self.block_size / max(1, request.scratch.get("prompt_token_count", 1))
        n = len(keys)
        return {rid: min(1.0, m / n * covered) for rid, m in matched.items()}

    def record(self, request: RequestView, replica_id: str) -> None:
        """On dispatch: in approx mode the replica will now hold this prompt (precise mode learns from events)."""
        if self.shared is not None:
            self.shared.record(replica_id, self.keys(request))

    def observe(self, request: RequestView, prompt_tokens: int | None) -> None:
        """Refine characters per token from a completed request's real prompt token count."""
        if prompt_tokens and prompt_tokens > 0 and request.prompt_text:
            ratio = len(request.prompt_text) / prompt_tokens
            self.chars_per_token += 0.05 * (ratio - self.chars_per_token)
            self._observed += 1
            if self._observed % 64 == 0 and self.mode == "approx":  # re-size the LRUs to the learned ratio
                for rid, kv_tokens in self._kv_seen.items():
                    self.index.set_capacity(rid, int(kv_tokens * self.chars_per_token / self.chunk_chars))

    def forget(self, replica_id: str) -> None:
        self.index.remove_replica(replica_id)
        self._kv_seen.pop(replica_id, None)

    async def start(self) -> None:
        if self.shared is not None:
            await self.shared.start()
        if self.precise is not None:
            await self.precise.start()

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
        if self.precise is not None:
            await self.precise.close()

    def stats(self) -> Mapping[str, float]:
        return {"entries": len(self.index), "evictions": self.index.evictions, "chars_per_token": self.chars_per_token}
