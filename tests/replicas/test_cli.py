"""`foresight replica` flags reach the replica config (sizes with units, the host KV tier)."""

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
