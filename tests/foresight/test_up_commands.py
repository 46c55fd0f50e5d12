"""`foresight up` builds each replica's command line from its own flags (the host KV tier reaches every replica)."""

from __future__ import annotations

import pytest

from foresight.cli import build_parser
from foresight.up import replica_cmd


def test_host_kv_memory_reaches_every_replica() -> None:
    args = build_parser().parse_args(["up", "--runner", "sim", "--model", "tiny", "--host-kv-memory", "8G"])
    cmd = replica_cmd(args, 1, 8101, "cpu")
    assert cmd[cmd.index("--host-kv-memory") + 1] == str(8 * 10**9) and "--replica-id" in cmd
    plain = build_parser().parse_args(["up", "--runner", "sim", "--model", "tiny"])
    assert "--host-kv-memory" not in replica_cmd(plain, 0, 8100, "cpu")


def test_a_bad_size_is_refused() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--host-kv-memory", "plenty"])
