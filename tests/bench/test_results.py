"""Result files record paths relative to the checkout, never the machine's layout."""

from __future__ import annotations

from pathlib import Path

from bench.results import REPO_ROOT, relative


def test_paths_inside_the_checkout_become_relative() -> None:
    assert relative(REPO_ROOT / "bench" / "results" / "x.png") == "bench/results/x.png"
    assert relative("/nonexistent-elsewhere/x.png") == "/nonexistent-elsewhere/x.png"
    # A model folder under the home folder (~/.cache/foresight) is recorded without the user's home.
    assert relative(Path.home() / ".cache" / "foresight" / "models" / "tiny") == "~/.cache/foresight/models/tiny"
