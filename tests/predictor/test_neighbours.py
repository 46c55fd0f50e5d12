"""The nearest-training-prompt score: finds similar prompts, never sees a prompt's own length in training, and
survives the artifact round trip."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from predictor import load, make_request
from predictor.features import extract
from predictor.neighbours import NeighbourScorer, fit_blend
from predictor.train import _neighbours, fit
from tests.predictor.conftest import SMALL

PROMPTS = ["Write a detailed essay about the history of rome.", "Write a detailed essay about the history of tea.",
           "In one word, name a color of the sea.", "In one word, name a color of snow.",
           "Translate good morning into French."]
TARGETS = np.array([1.5, 1.3, -1.2, -1.0, 0.1])


def _feats(texts):
    return [extract(make_request(model="m", prompt=t)) for t in texts]


def test_neighbours_average_the_most_similar_prompts():
    near = NeighbourScorer.fit(_feats(PROMPTS), TARGETS, k=2)
    essay = near.raw(_feats(["Write a detailed essay about the history of jazz."])[0])
    word = near.raw(_feats(["In one word, name a color of the moon."])[0])
    assert 1.2 < essay <= 1.5
    assert -1.2 <= word < -0.9
    assert near.raw(_feats(["zzz qqq"])[0]) == 0.0  # shares no slot with training: the average residual


def test_neighbours_round_trip_and_blend():
    near = NeighbourScorer.fit(_feats(PROMPTS), TARGETS, k=3)
    near.blend = fit_blend(np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 0.0, 1.0, 0.0]),
                           np.array([2.0, 1.0, 4.0, 3.0]))  # = 1*ridge + 2*knn + 0
    np.testing.assert_allclose(near.blend, (1.0, 2.0, 0.0), atol=1e-9)
    again = NeighbourScorer.from_dict(near.to_dict())
    for f in _feats(["Write an essay about owls.", "Name a color in one word."]):
        assert again.combine(0.5, f) == pytest.approx(near.combine(0.5, f), abs=1e-5)  # 6-7 digits stored


def test_training_rows_never_see_their_own_prompt(small_prepared):
    residual = small_prepared.log_y - small_prepared.log_y.mean()
    groups = small_prepared.groups
    held = np.flatnonzero(groups == groups[0])
    rest = np.flatnonzero(groups != groups[0])
    near = _neighbours(small_prepared, residual, rest, 5)
    assert len(near.targets) == len(set(groups[rest].tolist()))
    # A scorer fitted on all rows returns the prompt's own mean as its nearest neighbour: the leak avoided above.
    full = _neighbours(small_prepared, residual, np.arange(len(groups)), 1)
    assert abs(full.raw(small_prepared.features[held[0]]) - residual[held].mean()) < 1e-6


def test_predictor_with_and_without_neighbours(small_prepared, tmp_path):
    with_knn = fit(small_prepared, SMALL)
    without = fit(small_prepared, replace(SMALL, neighbours=0))
    assert with_knn.neighbours is not None and without.neighbours is None
    reqs = [make_request(model="long-model", prompt="Write a detailed essay about owls."),
            make_request(model="long-model", prompt="In one word, name a color of owls.")]
    for model in (with_knn, without):
        loaded = load(model.save(tmp_path / "m.json.gz"))
        assert loaded.predict_batch(reqs) == model.predict_batch(reqs)
        assert loaded.predict_batch(reqs)[0].p50 > loaded.predict_batch(reqs)[1].p50
