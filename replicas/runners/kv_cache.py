"""The paged KV cache the torch runner owns: per layer, K and V tensors indexed by physical block.

Layout per layer: ``[num_blocks, block_size, kv_heads, head_dim]``. A token at position ``p`` of a request lives
in slot ``block_ids[p // block_size] * block_size + p % block_size``; the flat view ``[num_blocks * block_size,
kv_heads, head_dim]`` is what the attention function writes and gathers by slot. The engine's block pool has
exactly ``num_blocks`` blocks, so a slot is always in range and memory never grows after start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVLayout:
    """Shape of the cache of one model: what a block costs in bytes."""

    num_layers: int
    kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @property
    def bytes_per_block(self) -> int:
        """K and V of every layer for one block of tokens."""
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.kv_heads * self.head_dim * element

    def blocks_for_bytes(self, budget: int) -> int:
        return max(0, int(budget) // self.bytes_per_block)

    @classmethod
    def from_model_config(cls, config: object, block_size: int, dtype: torch.dtype) -> KVLayout:
        """Read layers, KV heads and head size from a transformers config (Llama, Qwen2/3, Mistral style)."""
        heads = int(config.num_attention_heads)  # type: ignore[attr-defined]
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads  # type: ignore[attr-defined]
        return cls(int(config.num_hidden_layers), kv_heads, int(head_dim), block_size, dtype)  # type: ignore[attr-defined]


class PagedKVCache:
    """K/V storage for ``num_blocks`` blocks; allocated once, zero-filled (unused slots are never read unmasked)."""

    def __init__(self, layout: KVLayout, num_blocks: int, device: torch.device | str) -> None:
        if num_blocks <= 0:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.layout = layout
        self.num_blocks = num_blocks
        self.device = torch.device(device)
        shape = (num_blocks, layout.block_size, layout.kv_heads, layout.head_dim)
        self.keys = [torch.zeros(shape, dtype=layout.dtype, device=self.device) for _ in range(layout.num_layers)]
        self.values = [torch.zeros(shape, dtype=layout.dtype, device=self.device) for _ in range(layout.num_layers)]
        flat = (num_blocks * layout.block_size, layout.kv_heads, layout.head_dim)
        # Views share storage with the block-shaped tensors: writes through them land in the cache.
        self.flat_keys = [k.view(flat) for k in self.keys]
        self.flat_values = [v.view(flat) for v in self.values]

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.layout.block_size

    @property
    def nbytes(self) -> int:
        return self.num_blocks * self.layout.bytes_per_block

    def write(self, layer: int, slots: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store ``key``/``value`` ``[tokens, kv_heads, head_dim]`` at ``slots`` ``[tokens]`` of ``layer``."""
        self.flat_keys[layer].index_copy_(0, slots, key)
        self.flat_values[layer].index_copy_(0, slots, value)

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V at ``slots`` (any shape ``S``): tensors shaped ``S + [kv_heads, head_dim]``."""
        # index_select over a flat index is several times faster than advanced indexing on CPU.
        flat = slots.reshape(-1)
        shape = (*slots.shape, self.layout.kv_heads, self.layout.head_dim)
        return (self.flat_keys[layer].index_select(0, flat).view(shape),
                self.flat_values[layer].index_select(0, flat).view(shape))

    def gather_blocks(self, layer: int, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of whole blocks: ``blocks`` ``[..., n]`` -> ``[..., n * block_size, kv_heads, head_dim]``."""
        flat = blocks.reshape(-1)
        shape = (*blocks.shape[:-1], -1, self.layout.kv_heads, self.layout.head_dim)
        return (self.keys[layer].index_select(0, flat).view(shape),
                self.values[layer].index_select(0, flat).view(shape))


class HostKVCache:
    """The host tier's bytes: ``num_slots`` blocks of K/V per layer in host memory (pinned when the device is a
    GPU, so copies run at full PCIe speed). Slots are numbered by ``replicas.engine.host_tier.HostTier``."""

    def __init__(self, layout: KVLayout, num_slots: int, pin: bool = False) -> None:
        if num_slots <= 0:
            raise ValueError(f"the host KV tier needs at least one slot, got {num_slots}")
        self.layout = layout
        self.num_slots = num_slots
        shape = (num_slots, layout.block_size, layout.kv_heads, layout.head_dim)
        self.keys = [torch.zeros(shape, dtype=layout.dtype, pin_memory=pin) for _ in range(layout.num_layers)]
        self.values = [torch.zeros(shape, dtype=layout.dtype, pin_memory=pin) for _ in range(layout.num_layers)]

    def run(self, cache: PagedKVCache, offloads: list[tuple[int, int]], loads: list[tuple[int, int]]) -> None:
        """Copy device blocks to host slots (``offloads``: ``(block, slot)``), then host slots to device blocks
        (``loads``: ``(slot, block)``); that order lets a load read a slot the same step offloaded into."""
        dev = cache.device
        if offloads:
            blocks = torch.tensor([b for b, _ in offloads], dtype=torch.long, device=dev)
            slots = torch.tensor([s for _, s in offloads], dtype=torch.long)
            for layer in range(self.layout.num_layers):
                self.keys[layer].index_copy_(0, slots, cache.keys[layer].index_select(0, blocks).cpu())
                self.values[layer].index_copy_(0, slots, cache.values[layer].index_select(0, blocks).cpu())
        if loads:
            slots = torch.tensor([s for s, _ in loads], dtype=torch.long)
            blocks = torch.tensor([b for _, b in loads], dtype=torch.long, device=dev)
            for layer in range(self.layout.num_layers):
                cache.keys[layer].index_copy_(0, blocks, self.keys[layer].index_select(0, slots).to(dev))
                cache.values[layer].index_copy_(0, blocks, self.values[layer].index_select(0, slots).to(dev))

    @property
    def nbytes(self) -> int:
        return self.num_slots * self.layout.bytes_per_block
