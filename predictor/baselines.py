"""Baselines measured in the same cross-validation run as the candidates: global median, per-model median, and a
least-squares line in prompt length."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from predictor.train import Prepared

Baseline = Callable[[Prepared, Prepared], np.ndarray]


def global_median(train: Prepared, test: Prepared) -> np.ndarray:
    return np.full(len(test.log_y), np.median(np.expm1(train.log_y)))


def per_model_median(train: Prepared, test: Prepared) -> np.ndarray:
    y = np.expm1(train.log_y)
    fallback = np.median(y)
    medians = {m: float(np.median(y[train.models == m])) for m in set(train.models.tolist())}
    return np.array([medians.get(m, fallback) for m in test.models])


def linear_prompt_length(train: Prepared, test: Prepared) -> np.ndarray:
    # Prompt length in characters (log1p), the first dense feature; tokens = a + b * log1p(chars).
    x = np.array([f.dense[0] for f in train.features])
    a, b = np.polynomial.polynomial.polyfit(x, np.expm1(train.log_y), 1)
    return np.maximum(1.0, a + b * np.array([f.dense[0] for f in test.features]))


BASELINES: dict[str, Baseline] = {
    "global_median": global_median,
    "per_model_median": per_model_median,
    "linear_prompt_length": linear_prompt_length,
}
