"""Replica metrics: the generation-rate window stays bounded whether or not anyone scrapes ``/metrics``."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicas.config import ReplicaConfig
from replicas.engine.engine import Engine, StepStats
from replicas.engine.kv_events import KVEventPublisher
from replicas.engine.tokenizer import load_tokenizer
from replicas.metrics import ReplicaMetrics
from replicas.runners.cost_model import profile
from replicas.runners.sim import SimRunner


@pytest.fixture
def metrics(tiny_model_dir: Path) -> ReplicaMetrics:
    tok = load_tokenizer(tiny_model_dir)
    cfg = ReplicaConfig(model=str(tiny_model_dir), kv_blocks=64)
    runner = SimRunner(profile("h200-llama8b"), tok, kv_blocks=64)
    return ReplicaMetrics(Engine(cfg, runner, tok, publisher=KVEventPublisher(cfg.replica_id, None, cfg.key_prefix)))


def test_unscraped_rate_window_is_bounded(metrics: ReplicaMetrics, monkeypatch: pytest.MonkeyPatch) -> None:
    # A replica nobody scrapes (the gateway polls /load, not /metrics) used to keep every step's entry forever.
    clock = [1000.0]
    monkeypatch.setattr("replicas.metrics.time.monotonic", lambda: clock[0])
    for _ in range(10_000):
        metrics.on_step(StepStats(0.01, 0, 4, 4, 0, num_sampled=4))
        clock[0] += 0.01
    assert len(metrics._recent) <= 1001  # 10 s of 10 ms steps
    body = metrics.render().decode()
    rate = next(line for line in body.splitlines() if line.startswith("foresight_replica_generation_tokens_per_second"))
    assert float(rate.split()[-1]) == pytest.approx(400.0, rel=0.01)  # 4 tokens per 10 ms


def test_host_tier_state_and_traffic_are_exposed(tiny_model_dir: Path) -> None:
    from replicas.engine.request import Request, SamplingParams

    tok = load_tokenizer(tiny_model_dir)
    cfg = ReplicaConfig(model=str(tiny_model_dir), kv_blocks=2, host_kv_memory=1)
    runner = SimRunner(profile("h200-llama8b"), tok, kv_blocks=2)
    engine = Engine(cfg, runner, tok, publisher=KVEventPublisher(cfg.replica_id, None, cfg.key_prefix))
    assert engine.pool.host is None and engine.load_report()["kv_host_blocks_total"] == 0
    runner = SimRunner(profile("h200-llama8b"), tok, kv_blocks=2, host_kv_memory=10**9)
    engine = Engine(cfg, runner, tok, publisher=KVEventPublisher(cfg.replica_id, None, cfg.key_prefix))
    metrics = ReplicaMetrics(engine)
    pool = engine.pool
    for i in range(2):  # the second request's blocks evict the first's cached ones to the host tier
        req = Request(f"q{i}", [i * 100 + k for k in range(32)], SamplingParams())
        assert pool.allocate(req, 32)
        req.num_computed_tokens = 32
        pool.cache_full_blocks(req)
        pool.free(req)
    report = engine.load_report()
    assert report["kv_host_blocks_total"] == pool.host.num_slots > 0 and report["kv_host_blocks_cached"] == 2
    body = metrics.render().decode()
    assert 'foresight_replica_kv_host_blocks{state="cached"} 2.0' in body
    assert "foresight_replica_kv_offloaded_blocks_total 2.0" in body
    assert "foresight_replica_kv_loaded_blocks_total 0.0" in body
