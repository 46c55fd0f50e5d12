"""Gradient-boosted trees as flat arrays: fitted with scikit-learn, evaluated with a few numpy gathers.

Why not ``HistGradientBoostingRegressor.predict`` on the request path: its per-call overhead (validation, thread
pool) is hundreds of microseconds for one row. Here every tree is padded to a full binary tree of ``depth`` levels
(a leaf points to itself), so one prediction is ``depth`` vectorised steps over all trees at once.

Contract: ``TreeEnsemble.from_sklearn(model).predict(X)`` equals ``model.predict(X)`` (to float rounding) for
finite numeric inputs; the features must contain no NaN (``predictor.features`` guarantees that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TreeEnsemble:
    feature: np.ndarray  # (trees, nodes) int32
    threshold: np.ndarray  # (trees, nodes) float64; go left when x <= threshold
    left: np.ndarray  # (trees, nodes) int32
    right: np.ndarray  # (trees, nodes) int32
    value: np.ndarray  # (trees, nodes) float64 (leaf values; 0 elsewhere)
    baseline: float
    depth: int

    @classmethod
    def from_sklearn(cls, model: Any) -> TreeEnsemble:
        trees = [stage[0].nodes for stage in model._predictors]
        if any(node["is_categorical"] for nodes in trees for node in nodes):
            raise ValueError("categorical splits are not supported")
        width = max(len(nodes) for nodes in trees)
        shape = (len(trees), width)
        feature = np.zeros(shape, np.int32)
        threshold = np.zeros(shape, np.float64)
        left = np.tile(np.arange(width, dtype=np.int32), (len(trees), 1))
        right = left.copy()
        value = np.zeros(shape, np.float64)
        depth = 0
        for t, nodes in enumerate(trees):
            n = len(nodes)
            leaf = nodes["is_leaf"].astype(bool)
            feature[t, :n] = np.where(leaf, 0, nodes["feature_idx"])
            threshold[t, :n] = np.where(leaf, 0.0, nodes["num_threshold"])
            left[t, :n] = np.where(leaf, np.arange(n), nodes["left"])
            right[t, :n] = np.where(leaf, np.arange(n), nodes["right"])
            value[t, :n] = np.where(leaf, nodes["value"], 0.0)
            depth = max(depth, int(nodes["depth"].max()))
        baseline = float(np.ravel(model._baseline_prediction)[0])
        return cls(feature, threshold, left, right, value, baseline, depth)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Raw predictions for rows of ``X`` (n, features)."""
        X = np.atleast_2d(X)
        n_trees = self.feature.shape[0]
        rows = np.arange(n_trees)
        node = np.zeros((X.shape[0], n_trees), np.int32)
        for _ in range(self.depth):
            feat = self.feature[rows, node]
            go_left = np.take_along_axis(X, feat, axis=1) <= self.threshold[rows, node]
            node = np.where(go_left, self.left[rows, node], self.right[rows, node])
        return self.baseline + self.value[rows, node].sum(axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature.tolist(), "threshold": self.threshold.tolist(), "left": self.left.tolist(),
                "right": self.right.tolist(), "value": self.value.tolist(), "baseline": self.baseline,
                "depth": self.depth}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TreeEnsemble:
        return cls(np.asarray(d["feature"], np.int32), np.asarray(d["threshold"], np.float64),
                   np.asarray(d["left"], np.int32), np.asarray(d["right"], np.int32),
                   np.asarray(d["value"], np.float64), float(d["baseline"]), int(d["depth"]))
