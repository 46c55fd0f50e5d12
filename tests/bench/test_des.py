"""The discrete-event simulation reuses the real policies, accounting and engine; the routing/scale harnesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.des.cluster import Cluster, SimConfig
from bench.latency import summarize
from bench.results import relative
from bench.routing import goodput, parse_variants
from bench.traces import TraceRequest, lru_bound, prefix_ceiling


def conversations(groups: int = 6, turns: int = 6, gap: float = 0.4) -> list[TraceRequest]:
    """``groups`` conversations whose turns extend a growing shared prefix of 512-token blocks."""
    out = []
    for t in range(turns):
        for g in range(groups):
            ids = tuple([0] + [1000 * (g + 1) + k for k in range(2 + 2 * t)])
            out.append(TraceRequest(len(out), t * gap * groups + g * gap, 512 * len(ids) - 100, 20, ids))
    return out


def write_trace(path: Path, reqs: list[TraceRequest]) -> Path:
    """``reqs`` as a Mooncake-format trace, so that a command test needs no shared data beside the checkout."""
    path.write_text("".join(json.dumps({"timestamp": r.arrival_s * 1000.0, "input_length": r.input_length,
                                        "output_length": r.output_length, "hash_ids": list(r.hash_ids or ())})
                            + "\n" for r in reqs))
    return path


def bench_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``foresight bench ARGS`` in a subprocess, results under ``tmp_path``."""
    return subprocess.run([sys.executable, "-m", "foresight.cli", "bench", *args], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "FORESIGHT_RESULTS_DIR": str(tmp_path)})


def run(policy: str, reqs: list[TraceRequest], **kw) -> tuple:
    cluster = Cluster(SimConfig(policy, replicas=4, **kw))
    out = cluster.run(reqs)
    return cluster, out, summarize(out.results, out.virtual_s, 5.0, 1.0)


def test_every_request_completes_with_latencies_and_decisions() -> None:
    reqs = conversations()
    _, out, s = run("foresight", reqs)
    assert s["completed"] == len(reqs) and s["failed"] == 0
    assert all(r.ttft is not None and 0 < r.ttft <= r.e2e for r in out.results)
    assert all(r.output_tokens == 20 for r in out.results)  # forced lengths, as X-Sim-Output-Tokens does
    assert len(out.decision_s) == len(reqs) and len(out.decision_cpu_s) == len(reqs)


def test_cache_aware_policies_hit_more_than_round_robin() -> None:
    reqs = conversations()
    hits = {p: run(p, reqs)[1].prefix_hit_rate for p in ("round_robin", "prefix", "foresight")}
    ceiling = prefix_ceiling(reqs)
    assert hits["prefix"] > hits["round_robin"] + 0.15, hits
    assert hits["foresight"] > hits["round_robin"] + 0.15, hits
    assert hits["foresight"] <= ceiling + 0.05  # hits are measured in tokens, the ceiling in 512-token blocks


def test_precise_mode_learns_from_kv_events() -> None:
    from bench.prompts import resolve_tokenizer_dir

    reqs = conversations()
    opts = {"prefix_mode": "precise", "tokenizer": str(resolve_tokenizer_dir("tiny"))}
    cluster, out, _ = run("foresight", reqs, options=opts)
    index = cluster.policies[0].matcher.precise.index
    assert len(index.index) > 0 and all(s.seq is not None and not s.stale for s in index.streams.values())
    assert max(s.seq for s in index.streams.values()) > 5  # batches applied in sequence, no gap
    assert out.prefix_hit_rate > run("round_robin", reqs)[1].prefix_hit_rate + 0.15


def test_gateways_share_index_deltas_and_inflight_counts() -> None:
    cluster, _, s = run("foresight", conversations(), gateways=2)
    shared = [p.matcher.shared for p in cluster.policies]
    assert all(x.applied_remote > 0 for x in shared)
    assert s["completed"] == 36


def test_oracle_estimator_sees_true_lengths_and_history_does_not() -> None:
    reqs = conversations(groups=2, turns=2)
    oracle, _, _ = run("foresight", reqs, estimator="oracle")
    assert oracle.estimators[0].estimate("m", {"_true_output": 77}, "", 1).p50 == 77
    history, _, _ = run("foresight", reqs)
    assert history.estimators[0].estimate("m", {"_true_output": 77}, "", 1).p50 != 77


def test_lru_bound_is_below_the_ceiling_and_reaches_it_with_room() -> None:
    reqs = conversations()
    assert lru_bound(reqs, 10**9) == pytest.approx(prefix_ceiling(reqs))
    assert lru_bound(reqs, 3 * 512) < prefix_ceiling(reqs)


def test_variants_and_goodput() -> None:
    vs = parse_variants("round_robin,nopred=foresight?predictor=off&near_rel=0.2", ["sgl=python -m x --port {port}"])
    assert [(v.label, v.policy) for v in vs] == [("round_robin", "round_robin"), ("nopred", "foresight"),
                                                  ("sgl", "external")]
    assert vs[1].options == {"near_rel": "0.2"} and vs[1].harness == {"predictor": "off"}
    assert vs[2].external == "python -m x --port {port}"
    with pytest.raises(ValueError):
        parse_variants("", ["broken"])
    rows = [{"offered_rps": 1.0, "slo_attainment": 0.99}, {"offered_rps": 2.0, "slo_attainment": 0.91},
            {"offered_rps": 3.0, "slo_attainment": 0.5}]
    assert goodput(rows) == 2.0 and goodput(rows[2:]) is None


@pytest.mark.slow
def test_scale_command_writes_rows_and_goals(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    trace = write_trace(tmp_path / "trace.jsonl", conversations(groups=300, turns=4))  # > the 1,000 warm-up requests
    proc = bench_cli(tmp_path, "scale", "--trace", str(trace), "--fleets", "2,4", "--policies", "round_robin,foresight",
                     "--requests-per-replica", "3", "--json", str(out), "--name", "test-scale")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert [(r["replicas"], r["policy"]) for r in data["rows"]] == [
        (2, "round_robin"), (2, "foresight"), (4, "round_robin"), (4, "foresight")]
    assert all(r["decision_p99_ms"] > 0 and r["decision_cpu_p99_ms"] > 0 for r in data["rows"])
    assert (tmp_path / "scale.png").exists()  # beside the JSON


def test_foresight_priority_admits_short_predicted_jobs_first_under_overload() -> None:
    # A burst on one replica with 4 sequence slots: half the requests answer 8 tokens, half 400.
    reqs = [TraceRequest(i, 0.01 * i, 600, 8 if i % 2 else 400, (10_000 + i,)) for i in range(40)]
    results = {}
    for prio in ("1", "0"):
        cluster = Cluster(SimConfig("foresight", replicas=1, max_num_seqs=4, estimator="oracle",
                                    options={"priority": prio}))
        out = cluster.run(reqs)
        short = [r.ttft for r in out.results if r.output_tokens == 8]
        assert len(short) == 20 and all(t is not None for t in short)
        results[prio] = sorted(short)[10]
    # With priorities the short jobs overtake the queued long ones: their median TTFT drops several-fold.
    assert results["1"] < 0.5 * results["0"], results


def test_gateway_shedding_rejects_what_would_only_queue_and_keeps_the_rest_fast() -> None:
    # A burst of long uncached prompts on two replicas: far more prefill work than they can start in 0.5 s.
    reqs = [TraceRequest(i, 0.02 * i, 16_000, 50, (20_000 + i,)) for i in range(60)]
    assert parse_variants("s=foresight?shed=0.5", [])[0].harness == {"shed": "0.5"}
    unlabelled = parse_variants("prefix?shed=0", [])[0]  # the query's "=" does not make "prefix?shed" a label
    assert (unlabelled.label, unlabelled.policy, unlabelled.harness) == ("prefix", "prefix", {"shed": "0"})
    p90 = {}
    for policy in ("foresight", "prefix"):
        for shed in (0.0, 0.5):
            cluster = Cluster(SimConfig(policy, replicas=2, shed_queue_delay=shed))
            out = cluster.run(reqs)
            s = summarize(out.results, out.virtual_s, 5.0, 1.0)
            assert s["rejected"] == cluster.num_shed and s["completed"] + s["rejected"] == len(reqs)
            assert (s["rejected"] > 0) == (shed > 0), (policy, shed, s["rejected"])
            p90[policy, shed] = s["ttft_p90"]
        assert p90[policy, 0.5] < 0.5 * p90[policy, 0.0], p90


def test_host_tier_keeps_prefixes_the_device_cannot() -> None:
    """Device pools that hold about one conversation each: without a host tier the prefixes are recomputed,
    with one they come back over the (modelled) PCIe link, at a higher hit rate and a lower TTFT."""
    reqs = conversations(groups=8)
    small = {"kv_blocks": 700}
    _, plain, s_plain = run("prefix", reqs, **small)
    cluster, tiered, s_tiered = run("prefix", reqs, host_kv_memory=20 * 10**9, **small)
    assert tiered.prefix_hit_rate > plain.prefix_hit_rate + 0.2, (plain.prefix_hit_rate, tiered.prefix_hit_rate)
    assert sum(r.pool.num_loaded for r in cluster.replicas) > 0
    assert s_tiered["ttft_p50"] < s_plain["ttft_p50"]
    assert all(r.load_report(0.0)["kv_host_blocks_total"] > 0 for r in cluster.replicas)


def test_a_decode_step_cap_keeps_time_between_tokens_short_beside_long_prompts() -> None:
    # A 30k-token prompt is being prefilled when four short requests arrive and start decoding beside it.
    reqs = [TraceRequest(0, 0.0, 30_000, 10, (60_000,))]
    reqs += [TraceRequest(1 + i, 0.1 + 0.05 * i, 200, 6, (50_000 + i,)) for i in range(4)]
    tpot = {}
    for cap in (8192, 2048):
        out = Cluster(SimConfig("round_robin", replicas=1, decode_step_tokens=cap)).run(reqs)
        tpot[cap] = max(r.tpot for r in out.results[1:])
    # Every decode step shares the step with a chunk of the prompt: a 2k-token chunk takes a fraction of an 8k one.
    assert tpot[2048] < 0.7 * tpot[8192], tpot


@pytest.mark.slow
def test_routing_command_runs_des_jobs_side_by_side_with_the_same_results(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.jsonl", conversations(groups=8, turns=3))
    runs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"routing-{jobs}.json"
        proc = bench_cli(tmp_path, "routing", "--mode", "sim", "--trace", str(trace), "--replicas", "2",
                         "--speedups", "1,2", "--policies", "round_robin,prefix", "--jobs", jobs,
                         "--decode-step-tokens", "1024", "--json", str(out), "--name", f"test-routing-{jobs}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        data = json.loads(out.read_text())
        assert data["config"]["decode_step_tokens"] == 1024
        assert data["plots"] and all(Path(p).parent == tmp_path for p in data["plots"])  # beside the JSON
        runs[jobs] = [(r["label"], r["level"], r["ttft"], r["tpot_p90"]) for r in data["runs"]]
    assert runs["1"] == runs["2"] and len(runs["1"]) == 4
    # A higher level added later joins the stored runs in one sweep; another workload is refused.
    base = ["routing", "--mode", "sim", "--trace", str(trace), "--policies", "round_robin,prefix", "--decode-step-tokens", "1024",
            "--add-results", str(tmp_path / "routing-1.json")]
    merged = tmp_path / "merged.json"
    proc = bench_cli(tmp_path, *base, "--replicas", "2", "--speedups", "3", "--json", str(merged),
                     "--name", "test-merged")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(merged.read_text())
    assert sorted((r["label"], r["level"]) for r in data["runs"]) == [
        ("prefix", 1.0), ("prefix", 2.0), ("prefix", 3.0), ("round_robin", 1.0), ("round_robin", 2.0),
        ("round_robin", 3.0)]
    assert data["config"]["added_from"] == [relative(tmp_path / "routing-1.json")]
    proc = bench_cli(tmp_path, *base, "--replicas", "3", "--name", "test-refused")
    assert proc.returncode != 0 and "replicas" in proc.stderr
