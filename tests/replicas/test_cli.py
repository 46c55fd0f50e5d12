"""`foresight replica` flags reach the replica config (sizes with units, the host KV tier, the decode step budget)."""

from __future__ import annotations

import argparse

import pytest

from replicas.cli import config_from_args, register


def test_host_kv_memory_reaches_the_config() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cfg = config_from_args(parser.parse_args(["replica", "--host-kv-memory", "2G", "--kv-cache-memory", "64M"]))
    assert cfg.host_kv_memory == 2 * 10**9 and cfg.kv_cache_memory == 64 * 10**6
    with pytest.raises(SystemExit):
        parser.parse_args(["replica", "--host-kv-memory", "lots"])


def test_decode_step_tokens_reaches_the_scheduler_and_is_validated() -> None:
    from replicas.engine.block_pool import BlockPool
    from replicas.engine.scheduler import Scheduler

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cfg = config_from_args(parser.parse_args(["replica", "--decode-step-tokens", "2048"]))
    cfg.validate()
    assert cfg.decode_step_tokens == 2048
    assert Scheduler(BlockPool(8, 16), decode_step_tokens=cfg.decode_step_tokens).decode_step_tokens == 2048
    assert Scheduler(BlockPool(8, 16), max_batched_tokens=1024, decode_step_tokens=4096).decode_step_tokens == 1024
    cfg.decode_step_tokens = 0
    with pytest.raises(ValueError, match="decode_step_tokens"):
        cfg.validate()


def test_decode_context_memory_reaches_the_torch_runner(tiny_model_dir) -> None:  # noqa: ANN001
    pytest.importorskip("torch")
    from replicas.runners.torch_runner import DEFAULT_DECODE_CONTEXT_MEMORY, TorchRunner

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    for flags, want in (([], DEFAULT_DECODE_CONTEXT_MEMORY), (["--decode-context-memory", "8M"], 8 * 10**6)):
        cfg = config_from_args(parser.parse_args(["replica", "--runner", "torch", "--model", str(tiny_model_dir),
                                                  *flags]))
        runner = TorchRunner.from_config(cfg)
        assert runner.decode_context_memory == want
        runner.close()
