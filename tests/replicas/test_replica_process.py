"""Process-level contracts: no torch in a sim replica, the runner registry, CLI flags, Redis outages."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from replicas.cli import config_from_args, register
from replicas.runners.registry import RUNNERS, load_runner_class


def test_sim_replica_imports_no_torch() -> None:
    code = ("import sys, replicas.runners.registry as r, replicas.server, replicas.cli; "
            "r.load_runner_class('sim'); assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_registry_names_and_errors() -> None:
    assert RUNNERS["sim"] == "replicas.runners.sim:SimRunner" and "torch" in RUNNERS
    assert load_runner_class("sim").__name__ == "SimRunner"
    with pytest.raises(ValueError, match="unknown runner"):
        load_runner_class("tpu")


def test_cli_flags_become_the_config() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["replica", "--runner", "sim", "--model", "tiny", "--sim-profile", "h200-qwen32b",
                              "--port", "8123", "--redis", "redis://x:1/0", "--replica-id", "r7", "--block-size", "32",
                              "--max-num-seqs", "9", "--max-batched-tokens", "512", "--kv-blocks", "77",
                              "--hash-seed", "s", "--max-model-len", "4096"])
    cfg = config_from_args(args)
    assert (cfg.sim_profile, cfg.port, cfg.redis_url, cfg.replica_id, cfg.block_size, cfg.max_num_seqs,
            cfg.max_batched_tokens, cfg.kv_blocks, cfg.hash_seed, cfg.max_model_len) == (
        "h200-qwen32b", 8123, "redis://x:1/0", "r7", 32, 9, 512, 77, "s", 4096)
    assert cfg.public_url == "http://127.0.0.1:8123"
    bad = parser.parse_args(["replica", "--block-size", "0"])
    with pytest.raises(SystemExit, match="block_size"):
        bad.func(bad)


async def test_replica_serves_while_redis_is_down(tiny_model_dir: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from replicas.config import ReplicaConfig
    from replicas.engine.engine import Engine
    from replicas.engine.kv_events import KVEventPublisher
    from replicas.engine.tokenizer import load_tokenizer
    from replicas.load_report import LoadPublisher
    from replicas.runners.cost_model import profile
    from replicas.runners.sim import SimRunner
    from replicas.server import ReplicaServer
    from tests.helpers.procs import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    tok = load_tokenizer(tiny_model_dir)
    cfg = ReplicaConfig(model=str(tiny_model_dir), served_model_name="t", redis_url=dead, kv_blocks=64)
    engine = Engine(cfg, SimRunner(profile("h200-llama8b"), tok, kv_blocks=64), tok,
                    publisher=KVEventPublisher("r0", dead))
    loads = LoadPublisher(dead, "foresight:", "r0", cfg.public_url, ["t"], engine.load_report, 0.05, 1.0)
    client = TestClient(TestServer(ReplicaServer(engine, tok, loads).app))
    await client.start_server()
    try:
        r = await client.post("/v1/chat/completions", json={"model": "t", "max_tokens": 3, "ignore_eos": True,
                                                            "messages": [{"role": "user", "content": "hi " * 40}]})
        assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 3
        assert engine.publisher.seq >= 2 and engine.publisher.published == 0  # batches wait in the buffer
        assert loads.published == 0
    finally:
        await client.close()
