"""The host-memory KV tier: cached blocks evicted from device memory keep their content in host RAM.

A GPU holds a few hundred thousand tokens of KV; the host it sits in has several times that in DRAM. Without a
second tier, a prefix evicted from the device is recomputed in full; with it, the block is copied back over PCIe
(tens of GB/s), an order of magnitude cheaper than its prefill. This is the bookkeeping half (which digest sits in
which host slot); the runner owns the bytes and executes the copies the block pool records (``Transfers``).

Tiers are exclusive: a digest lives on the device (``BlockPool.cached``) or here, never both. A block evicted from
the device is ``put`` here (offloaded); a prefix hit here is ``take``n (loaded back into a fresh device block) and
leaves this tier. A taken slot is *pending* until the step that loads it has run (``release_pending``), so an
offload in the same step cannot overwrite it; the runner runs a step's offloads before its loads, so a load may
read a slot that the same step just wrote.

Invariants: ``len(lru) + len(free) + len(pending) == num_slots``; ``lru`` maps each host digest to one slot.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class Transfers:
    """KV copies a step needs before its forward pass: ``offloads`` (device block -> host slot) first, then
    ``loads`` (host slot -> device block)."""

    offloads: list[tuple[int, int]] = field(default_factory=list)
    loads: list[tuple[int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.offloads or self.loads)

    @property
    def num_blocks(self) -> int:
        """Blocks that cross the host link (either way)."""
        return len(self.offloads) + len(self.loads)


class HostTier:
    def __init__(self, num_slots: int) -> None:
        if num_slots <= 0:
            raise ValueError("the host tier needs at least one slot")
        self.num_slots = num_slots
        self.lru: OrderedDict[bytes, int] = OrderedDict()  # digest -> slot, least recently stored first
        self.free: list[int] = list(range(num_slots - 1, -1, -1))
        self.pending: list[int] = []

    def __contains__(self, digest: bytes) -> bool:
        return digest in self.lru

    def __len__(self) -> int:
        return len(self.lru)

    def can_store(self) -> bool:
        return bool(self.free or self.lru)

    def put(self, digest: bytes) -> tuple[int, bytes | None] | None:
        """Store ``digest``: ``(slot, evicted digest or None)``, or None when every slot is pending a load."""
        evicted = None
        if self.free:
            slot = self.free.pop()
        elif self.lru:
            evicted, slot = self.lru.popitem(last=False)
        else:
            return None
        self.lru[digest] = slot
        return slot, evicted

    def take(self, digest: bytes) -> int:
        """Remove ``digest`` for a load; its slot stays pending (unwritable) until ``release_pending``."""
        slot = self.lru.pop(digest)
        self.pending.append(slot)
        return slot

    def discard(self, digest: bytes) -> None:
        """Forget ``digest`` (its slot is free at once: nothing loads from it)."""
        self.free.append(self.lru.pop(digest))

    def release_pending(self) -> None:
        """The loads of the last step have run: their slots are free again."""
        if self.pending:
            self.free.extend(self.pending)
            self.pending.clear()

    def check_integrity(self) -> None:
        slots = list(self.lru.values()) + self.free + self.pending
        assert len(slots) == self.num_slots == len(set(slots)), "host slots lost or doubled"
