"""What ``foresight`` keeps per replica between requests: learned rates and the latest report, digested once.

A load report arrives about every 100 ms while requests arrive far more often, so everything derived from a
report (the rates' moving averages, KV capacity and use, queued prompt tokens) is computed once per new report
(noticed by the report object's identity or its ``ts``), not once per request and replica. The per-request loop
in the policy then does a handful of float operations per replica, which keeps a decision over 1,024 replicas
within a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _f(load: Mapping[str, Any], key: str) -> float:
    value = load.get(key)
    return float(value) if isinstance(value, int | float) else 0.0


class ReplicaState:
    __slots__ = ("prefill_tps", "decode_step_s", "waiting", "used", "capacity", "running", "block_size",
                 "kv_blocks_total", "cache_blocks_total", "max_num_seqs", "_seen", "_seen_ts", "remote_seen",
                 "own_requests", "tps_learned", "step_learned", "own_prefill", "own_decode",
                 "long_prefill", "long_prefill_total", "beside_ratio")

    def __init__(self, prefill_tps: float, decode_step_s: float, capacity: float) -> None:
        self.prefill_tps = prefill_tps
        self.decode_step_s = decode_step_s
        self.waiting = 0.0  # the replica's queued prompt tokens (before its prefix matching)
        self.used = 0.0  # KV tokens referenced by running requests
        self.capacity = capacity  # KV tokens in all
        self.running = 0
        self.tps_learned = False  # a report gave a measured rate (until then the fleet's average stands in)
        self.step_learned = False
        self.block_size = 16
        self.kv_blocks_total = 0
        self.cache_blocks_total = 0  # blocks of prefix cache: the device's plus the host tier's
        self.max_num_seqs = 0  # running requests at most (0: not reported)
        self._seen: object = None
        self._seen_ts: object = None
        # This gateway's dispatches since the other gateways' counts were last refreshed (``remote_seen``).
        self.remote_seen: object = None
        self.own_requests = 0
        self.own_prefill = 0.0
        self.own_decode = 0.0
        self.long_prefill = 0.0  # tokens left of the running long prefills, which share steps with admissions
        self.long_prefill_total = 0.0  # their uncached prompt tokens, as the gateways counted them on dispatch
        # Tokens of a running prefill per token of admitted work in a step, when the replica reserves part of each
        # step for admissions (``prefill_reserve``); None: it does not, a running prefill blocks newcomers.
        self.beside_ratio: float | None = None

    def sync_remote(self, remote: object) -> None:
        """A new ``ReplicaView.remote`` object means a state sync happened: peers' counts are fresh again."""
        if remote is not self.remote_seen:
            self.remote_seen = remote
            self.own_requests = 0
            self.own_prefill = self.own_decode = 0.0

    def update(self, load: Mapping[str, Any] | None, alpha: float, report_weight: float) -> bool:
        """Digest ``load`` if it is a report not seen yet; True when something changed."""
        if load is None:
            if self._seen is not None:  # the report expired: keep the learned rates, forget the snapshot
                self._seen = self._seen_ts = None
                self.waiting = self.used = 0.0
                self.running = 0
                self.long_prefill = self.long_prefill_total = 0.0
                self.beside_ratio = None
                return True
            return False
        ts = load.get("ts")
        if load is self._seen and ts == self._seen_ts:
            return False
        self._seen, self._seen_ts = load, ts
        tps = _f(load, "prefill_tokens_per_s")
        step = _f(load, "decode_step_ms") / 1000.0
        if tps > 0:
            self.prefill_tps = tps if not self.tps_learned else self.prefill_tps + alpha * (tps - self.prefill_tps)
            self.tps_learned = True
        if step > 0:
            self.decode_step_s = step if not self.step_learned else (
                self.decode_step_s + alpha * (step - self.decode_step_s))
            self.step_learned = True
        self.block_size = int(_f(load, "block_size")) or self.block_size
        self.kv_blocks_total = int(_f(load, "kv_blocks_total"))
        self.cache_blocks_total = self.kv_blocks_total + int(_f(load, "kv_host_blocks_total"))
        self.waiting = report_weight * _f(load, "waiting_prompt_tokens")
        self.used = _f(load, "kv_blocks_used") * self.block_size
        self.capacity = self.kv_blocks_total * self.block_size or self.capacity
        self.running = int(_f(load, "num_running"))
        self.max_num_seqs = int(_f(load, "max_num_seqs"))
        self.long_prefill = _f(load, "long_prefill_tokens")
        self.long_prefill_total = max(self.long_prefill, _f(load, "long_prefill_total"))
        reserve, budget = _f(load, "prefill_reserve"), _f(load, "max_batched_tokens")
        self.beside_ratio = (budget - reserve) / reserve if 0 < reserve < budget else None
        return True
