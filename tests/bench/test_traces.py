"""Workload loaders, time shaping, the prefix ceiling, and token-exact synthetic prompts."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from bench.prompts import PromptSynth
from bench.traces import (
    TraceRequest,
    load_azure,
    load_content,
    load_trace,
    poisson_arrivals,
    prefix_ceiling,
    shape,
    with_content,
)


def write_mooncake(path: Path, recs: list[dict]) -> Path:
    with gzip.open(path, "wb") as f:
        for r in recs:
            f.write(orjson.dumps(r) + b"\n")
    return path


MOONCAKE = [
    {"timestamp": 0, "input_length": 1000, "output_length": 5, "hash_ids": [0, 1]},
    {"timestamp": 0, "input_length": 1400, "output_length": 7, "hash_ids": [0, 1, 2]},
    {"timestamp": 3000, "input_length": 600, "output_length": 3, "hash_ids": [0, 3]},
    {"timestamp": 6000, "input_length": 300, "output_length": 4, "hash_ids": [4]},
]


def test_mooncake_loader_and_ceiling(tmp_path: Path) -> None:
    reqs = load_trace(write_mooncake(tmp_path / "t.jsonl.gz", MOONCAKE))
    assert [r.arrival_s for r in reqs] == [0, 0, 3.0, 6.0]
    assert reqs[1].hash_ids == (0, 1, 2) and reqs[1].output_length == 7
    # blocks: 2 + 3 + 2 + 1 = 8; hits: req1 {0,1}, req2 {0} -> 3/8
    assert prefix_ceiling(reqs) == pytest.approx(3 / 8)


def test_azure_loader_parses_seven_digit_fractions(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                 "2023-11-16 18:15:50.9951690,396,109\n")
    reqs = load_azure(p)
    assert reqs[0].arrival_s == 0 and reqs[1].arrival_s == pytest.approx(4.314579, abs=1e-5)
    assert (reqs[1].input_length, reqs[1].output_length, reqs[1].hash_ids) == (396, 109, None)
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace(tmp_path / "x.parquet")


def test_shape_speedup_rate_duration() -> None:
    reqs = [TraceRequest(i, float(i), 10, 10) for i in range(100)]
    fast = shape(reqs, speedup=4)
    assert fast[-1].arrival_s == pytest.approx(99 / 4)
    window = shape(reqs, rate=5.0, duration=10)
    assert len(window) == 50 and window[-1].arrival_s <= 10
    assert len(window) / (window[-1].arrival_s or 1) == pytest.approx(5.0, rel=0.05)
    assert len(shape(reqs, duration=9.5, start=50)) == 10
    with pytest.raises(ValueError):
        shape(reqs, speedup=2, rate=3)


def test_content_with_real_lengths_on_poisson_arrivals(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(orjson.dumps({"instruction": f"q{i}", "output": "w " * i, "generator": "g"}).decode()
                           for i in range(1, 6)))
    items = load_content(p)
    arrivals = poisson_arrivals(20, rate=10.0, seed=1)
    assert arrivals == sorted(arrivals) and 0.5 < arrivals[-1] < 6
    reqs = with_content(arrivals, items, lambda s: len(s.split()), seed=0)
    assert len(reqs) == 20 and all(r.output_length == int(r.prompt[1:]) for r in reqs)


def test_synthetic_prompts_are_token_exact_and_share_blocks(tiny_model_dir: Path) -> None:
    synth = PromptSynth(tiny_model_dir)
    a = TraceRequest(0, 0, 1000, 1, (7, 8))
    b = TraceRequest(1, 0, 1300, 1, (7, 8, 9))
    c = TraceRequest(2, 0, 700, 1, None)
    for r in (a, b, c):
        assert synth.verify(r), r
    ta = synth.tokenizer.encode(synth.text(a), add_special_tokens=False).ids
    tb = synth.tokenizer.encode(synth.text(b), add_special_tokens=False).ids
    assert ta[:1000] == tb[:1000]  # a's partial second block is a prefix of b's full one
    tc = synth.tokenizer.encode(synth.text(c), add_special_tokens=False).ids
    assert ta[:16] != tc[:16]
    assert PromptSynth(tiny_model_dir).text(b) == synth.text(b)  # deterministic across instances


def test_spread_ties_spreads_same_timestamp_groups_over_their_step() -> None:
    from bench.traces import spread_ties

    reqs = [TraceRequest(i, t, 10, 10) for i, t in enumerate([0, 0, 0, 3, 3, 6])]
    out = spread_ties(reqs, seed=1)
    assert [r.index for r in out] == list(range(6))
    assert all(0 <= r.arrival_s < 3 for r in out[:3]) and all(3 <= r.arrival_s < 6 for r in out[3:5])
    assert len({r.arrival_s for r in out}) == 6
    assert [r.arrival_s for r in out] == sorted(r.arrival_s for r in out)
