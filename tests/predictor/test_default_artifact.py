"""The shipped artifact is reproducible: `foresight predictor train` (the documented command) rebuilds it."""

from __future__ import annotations

import gzip

import numpy as np
import orjson
import pytest
from scipy.stats import spearmanr

from foresight.cli import main
from predictor import DEFAULT_ARTIFACT, load, load_default, make_request


def _inputs_available() -> bool:
    from bench.results import shared_data_dir
    from predictor.cli import DEFAULT_DATA
    from replicas.models import MARKER, cache_dir

    try:
        data = shared_data_dir() / DEFAULT_DATA
    except FileNotFoundError:
        return False
    return data.is_file() and (cache_dir() / "models" / "smollm2" / MARKER).exists()


@pytest.mark.slow
@pytest.mark.skipif(not _inputs_available(), reason="needs the shared data and the converted smollm2 tokenizer")
def test_default_artifact_rebuilds_from_the_documented_command(tmp_path):
    out = tmp_path / "rebuilt.json.gz"
    assert main(["predictor", "train", "--out", str(out)]) == 0
    shipped = orjson.loads(gzip.decompress(DEFAULT_ARTIFACT.read_bytes()))
    rebuilt = orjson.loads(gzip.decompress(out.read_bytes()))
    assert rebuilt["meta"]["tokenizer"] == shipped["meta"]["tokenizer"]
    if out.read_bytes() == DEFAULT_ARTIFACT.read_bytes():
        return  # byte for byte (same library versions)
    # Another CPU or numeric library rounds differently: BLAS kernels (AVX-512 vs AVX2) change the text model's
    # weights in the last bits, and a boosted tree then picks another split where two gains nearly tie. Measured
    # between two machines: median difference 2%, largest 9%, rank correlation 0.998. A changed training recipe
    # (another feature, config or data) moves the predictions far more than that.
    a, b = load_default(), load(out)
    prompts = ["Write a detailed essay about rivers.", "What is 2+2?", "List ten tips for sleeping well.",
               "Translate 'good morning' into French.", "Explain how a transistor works."]
    reqs = [make_request(model=m, prompt=p) for m in a.meta["models"] for p in prompts]
    pa = np.array([[p.p50, p.p90] for p in a.predict_batch(reqs)], float)
    pb = np.array([[p.p50, p.p90] for p in b.predict_batch(reqs)], float)
    rel = np.abs(pb - pa) / np.maximum(pa, 1.0)
    assert np.median(rel) <= 0.03, np.median(rel)
    assert rel.max() <= 0.15, rel.max()
    for col in (0, 1):  # p50, p90
        assert spearmanr(pa[:, col], pb[:, col]).statistic >= 0.99
