"""The simulated runner's output tokens decode to text even when the output is short."""

from __future__ import annotations

from pathlib import Path

from replicas.engine.detokenizer import IncrementalDetokenizer
from replicas.engine.tokenizer import load_tokenizer
from replicas.runners.cost_model import profile
from replicas.runners.sim import SimRunner


def test_every_output_start_gives_text_within_three_tokens(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    runner = SimRunner(profile("h100-llama8b"), tok)
    assert runner.starts and set(runner.starts) <= set(range(len(runner.corpus)))
    # The corpus holds multi-byte characters (東京, accents): starting inside one left a 3-token output empty.
    assert len(runner.starts) < len(runner.corpus)
    for start in runner.starts:
        detok = IncrementalDetokenizer(tok, [1, 2, 3])
        for k in range(3):
            detok.add(runner.corpus[(start + k) % len(runner.corpus)])
        assert detok.take(True), f"offset {start} decodes to no text"
