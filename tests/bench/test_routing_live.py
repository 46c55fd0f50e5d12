"""`foresight bench routing --mode live`: real replica, gateway and external-router processes, one small trace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.bench.test_des import bench_cli, conversations, write_trace

pytestmark = pytest.mark.slow


def test_live_mode_runs_gateways_and_an_external_router_on_fresh_replicas(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.jsonl", conversations(groups=2, turns=2, gap=0.3))
    # The external router is our own gateway started from a command template, as sglang-router would be: it
    # exercises the template, the health wait and the replay through a process the harness did not configure.
    external = f"ext={sys.executable} -m foresight.cli gateway --port {{port}} --replica {{replicas}} --policy prefix"
    out = tmp_path / "live.json"
    proc = bench_cli(tmp_path, "routing", "--mode", "live", "--trace", str(trace), "--replicas", "2",
                     "--speedups", "1", "--policies", "round_robin?shed=0", "--external", external,
                     "--slo-ttft", "30", "--slo-tpot", "5", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    runs = {r["label"]: r for r in data["runs"]}
    assert set(runs) == {"round_robin", "ext"}
    assert runs["round_robin"]["harness"] == {"shed": "0"}  # the gateway ran with --shed-queue-delay 0
    for r in runs.values():
        assert (r["completed"], r["failed"], r["rejected"]) == (4, 0, 0), r
        assert r["output_length_mismatch"] == 0  # the trace's lengths reached the replicas through both
        assert r["replica_lag_resets"] >= 0 and r["replica_lag_lost_s"] >= 0.0  # the host's distortion, recorded
        assert r["prefix_hit_rate"] is not None
    assert "warning" not in proc.stderr
