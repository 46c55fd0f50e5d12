"""`foresight bench engine` end to end on the tiny model: our engine and HF's static batch agree token for token,
and the results record ratios and goals without the machine's home folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_engine_benchmark_writes_ratios_and_agrees_with_hf(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "foresight.cli", "bench", "engine", "--models", "tiny",
                           "--requests", "4", "--prompt-tokens", "8", "--output-tokens", "4", "--repeats", "1",
                           "--ttft-trials", "1", "--skip", "cb,sequential"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FORESIGHT_RESULTS_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "engine_tiny.json").read_text())
    assert data["greedy_outputs_identical_to_ours"] == {"static": 1.0}
    assert data["ratios"]["vs_static_batch"] > 0 and data["ratios"]["ttft_cached_ratio"] > 0
    assert str(Path.home()) not in json.dumps(data)
    assert (tmp_path / "engine_tiny.png").exists()
