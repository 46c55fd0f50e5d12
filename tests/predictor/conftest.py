"""Small synthetic training data with a known structure: the model name sets a base length, and prompts that ask
for an essay get answers several times longer than prompts that ask for one word."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from predictor.data import load_examples
from predictor.train import Prepared, TrainConfig, fit

SMALL = TrainConfig(inner_folds=3, trees=30)
MODELS = {"short-model": 20, "long-model": 120}
TOPICS = ["the sea", "dogs", "rust", "tea", "rome", "jazz", "bees", "snow", "chess", "maps", "glass", "salt",
          "clouds", "trains", "bread", "owls", "coins", "ink", "kites", "moss"]


def make_rows() -> list[dict]:
    rows = []
    for i, topic in enumerate(TOPICS):
        for kind, factor in (("Write a detailed essay about", 4.0), ("In one word, name a color of", 0.25),
                             ("Explain briefly", 1.0)):
            for model, base in MODELS.items():
                tokens = max(1, int(base * factor * (1 + 0.1 * (i % 3))))
                rows.append({"instruction": f"{kind} {topic}.", "output": " ".join(["word"] * tokens),
                             "generator": model, "dataset": "synthetic"})
    return rows


@pytest.fixture(scope="session")
def alpaca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "alpaca.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in make_rows())))
    return path


class WordTokenizer:
    """A stand-in with the `tokenizers` batch API, counting whitespace words (the synthetic outputs are words)."""

    class _Enc:
        def __init__(self, n: int) -> None:
            self.ids = list(range(n))

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[_Enc]:
        return [self._Enc(len(t.split())) for t in texts]


@pytest.fixture(scope="session")
def small_prepared(alpaca_file: Path) -> Prepared:
    return Prepared.of(load_examples(alpaca_file, WordTokenizer()))


@pytest.fixture(scope="session")
def small_predictor(small_prepared: Prepared):
    return fit(small_prepared, SMALL)
