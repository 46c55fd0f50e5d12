from __future__ import annotations

import gzip
import subprocess
import sys
from dataclasses import replace

import numpy as np
import orjson
import pytest

from predictor import ArtifactError, load, load_default, make_request
from predictor.heads import HEADS
from predictor.model import ARTIFACT_VERSION
from predictor.train import fit
from tests.predictor.conftest import SMALL


def test_learns_model_and_prompt_signal(small_predictor):
    p = small_predictor
    essay = dict(messages=[{"role": "user", "content": "Write a detailed essay about the moon."}])
    word = dict(messages=[{"role": "user", "content": "In one word, name a color of the moon."}])
    long_essay = p.predict(model="long-model", **essay)
    assert long_essay.p50 > 2 * p.predict(model="long-model", **word).p50
    assert long_essay.p50 > 2 * p.predict(model="short-model", **essay).p50
    assert long_essay.p90 >= long_essay.p50
    # An unknown model falls back to the all-model prior: between the two known ones.
    unknown = p.predict(model="never-seen", **essay).p50
    assert p.predict(model="short-model", **essay).p50 < unknown < long_essay.p50
    clamped = p.predict(model="long-model", max_tokens=10, **essay)
    assert clamped.p50 <= 10 and clamped.p90 <= 10


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_trains_predicts_and_round_trips(small_prepared, head, tmp_path):
    model = fit(small_prepared, replace(SMALL, head=head))
    requests = [make_request(model=m, prompt=t) for m in ("long-model", "short-model")
                for t in ("Write a detailed essay about owls.", "In one word, name a color of owls.")]
    before = model.predict_batch(requests)
    assert [model.predict_request(r) for r in requests] == before
    assert before[0].p50 > before[1].p50  # essay longer than one word
    loaded = load(model.save(tmp_path / "a.json.gz"))
    assert loaded.predict_batch(requests) == before
    assert loaded.meta["config"]["head"] == head


def test_training_is_deterministic(small_prepared, small_predictor):
    again = fit(small_prepared, SMALL)
    assert again.to_bytes() == small_predictor.to_bytes()


def _rewrite(path, **changes):
    data = orjson.loads(gzip.decompress(path.read_bytes()))
    data.update(changes)
    path.write_bytes(gzip.compress(orjson.dumps(data)))


def test_mismatched_artifacts_fail_clearly(small_predictor, tmp_path):
    path = small_predictor.save(tmp_path / "a.json.gz")
    _rewrite(path, artifact_version=ARTIFACT_VERSION + 1)
    with pytest.raises(ArtifactError, match="artifact version .* rebuild"):
        load(path)
    small_predictor.save(path)
    _rewrite(path, feature_schema="foresight-predictor-features/0")
    with pytest.raises(ArtifactError, match="feature schema"):
        load(path)
    small_predictor.save(path)
    _rewrite(path, head="forest")
    with pytest.raises(ArtifactError, match="unknown head"):
        load(path)
    path.write_bytes(b"not gzip")
    with pytest.raises(ArtifactError, match="not a readable"):
        load(path)
    with pytest.raises(ArtifactError, match="not found"):
        load(tmp_path / "missing.json.gz")


def test_default_artifact_is_small_and_described():
    p = load_default()
    from predictor.api import DEFAULT_ARTIFACT

    assert DEFAULT_ARTIFACT.stat().st_size < 5_000_000
    assert p.meta["tokenizer"]["name"] == "smollm2" and len(p.meta["tokenizer"]["sha256"]) == 64
    assert p.meta["rows"] > 10_000 and len(p.meta["models"]) == 17
    pred = p.predict(model="gpt4", messages=[{"role": "user", "content": "Write a long essay on rivers."}])
    short = p.predict(model="gpt4", messages=[{"role": "user", "content": "What is 2+2? Answer in one word."}])
    assert pred.p50 > short.p50


def test_default_path_imports_no_heavy_libraries():
    code = ("import sys, predictor; p = predictor.load_default(); p.predict(model='m', prompt='hi'); "
            "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'scipy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tree_ensemble_matches_sklearn():
    from sklearn.ensemble import HistGradientBoostingRegressor

    from predictor.trees import TreeEnsemble

    rng = np.random.default_rng(0)
    X = rng.random((400, 5))
    y = 3 * X[:, 0] + (X[:, 1] > 0.5) + rng.random(400) * 0.1
    models = [HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=30, max_depth=d).fit(X, y)
              for q, d in ((0.5, 3), (0.9, 4))]
    trees = TreeEnsemble.from_dict(TreeEnsemble.from_sklearn(models).to_dict())
    got = trees.predict(X)
    assert got.shape == (400, 2) and trees.depth == 4
    for k, model in enumerate(models):
        np.testing.assert_allclose(got[:, k], model.predict(X), rtol=1e-9)
    np.testing.assert_allclose(trees.predict(X[:1])[0], got[0])
    for i in range(5):
        np.testing.assert_allclose(trees.predict_one(X[i]), got[i], rtol=1e-12)


def test_text_score_uses_extra_inputs(small_prepared):
    """Extra text-score inputs (how ``eval --embeddings`` adds sentence vectors) are learned and scored."""
    from dataclasses import replace as dc_replace

    from predictor.text import TextScorer

    # An extra input that encodes the answer's residual exactly: the scorer must pick it up.
    resid = small_prepared.log_y - small_prepared.log_y.mean()
    feats = [dc_replace(f, extra=np.array([r, 0.0])) for f, r in zip(small_prepared.features, resid, strict=True)]
    with_extra = TextScorer.fit(feats, resid, alpha=1.0)
    without = TextScorer.fit(small_prepared.features, resid, alpha=1.0)
    err_with = np.abs(with_extra.score_batch(feats) - resid).mean()
    err_without = np.abs(without.score_batch(small_prepared.features) - resid).mean()
    assert err_with < 0.5 * err_without
    assert TextScorer.from_dict(with_extra.to_dict()).score(feats[0]) == pytest.approx(with_extra.score(feats[0]))
