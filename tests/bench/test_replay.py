"""`foresight bench replay` against real processes: a gateway (foresight policy) in front of two sim replicas."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.helpers.procs import ProcessManager, foresight_cmd, free_port

pytestmark = pytest.mark.slow

# Two conversations: each later turn extends the earlier one's blocks (the Mooncake shape, at small lengths).
TRACE = [
    {"timestamp": 0, "input_length": 700, "output_length": 6, "hash_ids": [0, 1]},
    {"timestamp": 50, "input_length": 650, "output_length": 6, "hash_ids": [0, 5]},
    {"timestamp": 600, "input_length": 1200, "output_length": 8, "hash_ids": [0, 1, 2, 3]},
    {"timestamp": 650, "input_length": 1100, "output_length": 8, "hash_ids": [0, 5, 6]},
    {"timestamp": 1200, "input_length": 1500, "output_length": 5, "hash_ids": [0, 1, 2, 3]},
    {"timestamp": 1250, "input_length": 1500, "output_length": 5, "hash_ids": [0, 5, 6]},
]


def test_replay_through_the_gateway_reports_latency_slo_and_prefix_hits(
        procs: ProcessManager, tiny_model_dir: Path, tmp_path: Path) -> None:
    urls = []
    for i in range(2):
        port = free_port()
        urls.append(procs.spawn(foresight_cmd(
            "replica", "--runner", "sim", "--model", str(tiny_model_dir), "--served-model-name", "tiny",
            "--sim-profile", "h100-llama8b", "--port", str(port), "--replica-id", f"r{i}",
            "--max-model-len", "8192"), port).url)
    gport = free_port()
    gateway = procs.spawn(foresight_cmd("gateway", "--port", str(gport), "--policy", "foresight",
                                        "--predictor", "off", "--replica", ",".join(urls)), gport)
    trace = tmp_path / "trace.jsonl.gz"
    with gzip.open(trace, "wb") as f:
        f.writelines(orjson.dumps(r) + b"\n" for r in TRACE)
    out = tmp_path / "out.json"
    cmd = foresight_cmd("bench", "replay", "--target", gateway.url, "--trace", str(trace), "--tokenizer",
                        str(tiny_model_dir), "--slo-ttft", "5", "--slo-tpot", "1", "--json", str(out),
                        "--replica-metrics", ",".join(urls), "--keep-results", "--debug-route", "--quiet")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    s = data["summary"]
    assert (s["completed"], s["failed"], s["rejected"]) == (6, 0, 0), s
    for key in ("ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50", "tpot_p90", "e2e_p50", "e2e_p90", "goodput_rps",
                "duration_s"):
        assert isinstance(s[key], float) and s[key] >= 0, key
    assert s["slo_attainment"] == 1.0
    assert [r["output_tokens"] for r in data["results"]] == [6, 6, 8, 8, 5, 5]  # forced by X-Sim-Output-Tokens
    assert all("foresight:" in r["route"] for r in data["results"])  # the decision is explained per request
    # The later turns find their earlier turns' blocks: real hits on the replicas, read from /metrics.
    assert s["prefix_hit_rate"] is not None and s["prefix_hit_rate"] > 0.3
    assert s["prefix_ceiling"] == pytest.approx(12 / 18)  # hits 1 + 2 + 2 + 4 + 3 of 18 blocks


def test_forced_lengths_survive_a_router_that_drops_the_header(procs: ProcessManager, tiny_model_dir: Path) -> None:
    """sglang-router drops ``X-Sim-Output-Tokens``: the body's ``ignore_eos`` + ``max_tokens`` must still force the
    trace's lengths (they once did not, and that router's fleet did less work than everyone else's)."""
    import asyncio

    from bench.latency import summarize
    from bench.prompts import PromptSynth
    from bench.replay import prepare
    from bench.replay_client import run_open_loop
    from bench.traces import TraceRequest

    port = free_port()
    # A short mean answer: without forcing, most answers would end at EOS well before the trace's lengths.
    replica = procs.spawn(foresight_cmd(
        "replica", "--runner", "sim", "--model", str(tiny_model_dir), "--served-model-name", "tiny",
        "--sim-profile", "h100-llama8b", "--sim-output-mean", "4", "--port", str(port)), port)
    reqs = [TraceRequest(i, 0.01 * i, 40, 30 + i, None) for i in range(6)]
    prepared = prepare(reqs, PromptSynth(tiny_model_dir), "tiny", "completions", True, False)
    for p in prepared:
        assert orjson.loads(p.body)["ignore_eos"] is True
        del p.headers["X-Sim-Output-Tokens"]  # what a header-dropping router forwards
    results, wall = asyncio.run(run_open_loop(replica.url, prepared, timeout=60))
    assert [r.output_tokens for r in results] == [30 + i for i in range(6)]
    assert summarize(results, wall, 5.0, 1.0)["output_length_mismatch"] == 0
    results[0].output_tokens -= 1  # the summary counts a completed request whose length differs
    assert summarize(results, wall, 5.0, 1.0)["output_length_mismatch"] == 1


def test_replay_rejects_a_missing_trace(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "foresight.cli", "bench", "replay", "--target",
                           "http://127.0.0.1:9", "--trace", str(tmp_path / "nope.jsonl")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not found" in proc.stderr
