"""Gradient-boosted trees as flat arrays: fitted with scikit-learn, evaluated with a few numpy gathers.

Why not ``HistGradientBoostingRegressor.predict`` on the request path: its per-call overhead (validation, thread
pool) is hundreds of microseconds for one row. Here each tree is laid out as a complete binary tree of ``depth``
levels in heap order (children of node i are 2i+1 and 2i+2); a leaf above the last level becomes a split that
always goes left, with its value copied to every leaf below it. One prediction is then ``depth`` vectorised steps
over all trees of all outputs at once (p50 and p90 share the pass).

Contract: ``TreeEnsemble.from_sklearn([m1, m2]).predict(X)[:, k]`` equals ``mk.predict(X)`` (to float rounding)
for finite numeric inputs; the features must contain no NaN (``predictor.features`` guarantees that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TreeEnsemble:
    feature: np.ndarray  # (trees, 2**depth - 1) int64, heap order
    threshold: np.ndarray  # (trees, 2**depth - 1) float64; go left when x <= threshold
    value: np.ndarray  # (trees, 2**depth) float64, the leaves of the complete tree
    segments: np.ndarray  # (outputs + 1,) int64: trees [segments[k], segments[k+1]) sum into output k
    baseline: np.ndarray  # (outputs,) float64
    depth: int

    @classmethod
    def from_sklearn(cls, models: Sequence[Any]) -> TreeEnsemble:
        trees = [stage[0].nodes for m in models for stage in m._predictors]
        if any(node["is_categorical"] for nodes in trees for node in nodes):
            raise ValueError("categorical splits are not supported")
        depth = max(1, max(int(nodes["depth"].max()) for nodes in trees))
        inner, leaves = 2 ** depth - 1, 2 ** depth
        feature = np.zeros((len(trees), inner), np.int64)
        threshold = np.full((len(trees), inner), np.inf)
        value = np.zeros((len(trees), leaves))

        for t, nodes in enumerate(trees):
            def place(src: int, dst: int, level: int, t: int = t, nodes: Any = nodes) -> None:
                node = nodes[src]
                if level == depth:
                    value[t, dst - inner] = node["value"]
                    return
                if node["is_leaf"]:  # always left from here down; every leaf below carries the value
                    first = dst
                    for _ in range(depth - level):
                        first = 2 * first + 1
                    span = 2 ** (depth - level)
                    value[t, first - inner:first - inner + span] = node["value"]
                    return
                feature[t, dst] = node["feature_idx"]
                threshold[t, dst] = node["num_threshold"]
                place(int(node["left"]), 2 * dst + 1, level + 1)
                place(int(node["right"]), 2 * dst + 2, level + 1)

            place(0, 0, 0)
        sizes = [len(m._predictors) for m in models]
        segments = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        baseline = np.array([float(np.ravel(m._baseline_prediction)[0]) for m in models])
        return cls(feature, threshold, value, segments, baseline, depth)

    def __post_init__(self) -> None:
        # Flat views and index bases, computed once: the single-row path is a dozen small numpy calls.
        n_trees, inner = self.feature.shape
        set_ = object.__setattr__
        set_(self, "_base", np.arange(n_trees, dtype=np.int64) * inner)
        set_(self, "_leaf_base", np.arange(n_trees, dtype=np.int64) * (inner + 1) - inner)
        set_(self, "_feat", np.ascontiguousarray(self.feature.ravel()))
        set_(self, "_thr", np.ascontiguousarray(self.threshold.ravel()))
        set_(self, "_val", np.ascontiguousarray(self.value.ravel()))
        set_(self, "_starts", self.segments[:-1].copy())

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        """(outputs,) raw predictions for one row ``x`` (features,)."""
        base = self._base
        node = np.zeros_like(base)
        for _ in range(self.depth):
            at = base + node
            node = 2 * node + 1 + (x[self._feat[at]] > self._thr[at])
        return np.add.reduceat(self._val[self._leaf_base + node], self._starts) + self.baseline

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(n, outputs) raw predictions for rows of ``X`` (n, features)."""
        X = np.atleast_2d(X)
        n_trees, inner = self.feature.shape
        base = np.arange(n_trees, dtype=np.int64) * inner
        feat, thr = self.feature.ravel(), self.threshold.ravel()
        rows = (np.arange(X.shape[0], dtype=np.int64) * X.shape[1])[:, None]
        flat_x = X.ravel()
        node = np.zeros((X.shape[0], n_trees), np.int64)
        for _ in range(self.depth):
            at = base + node
            right = flat_x[rows + feat[at]] > thr[at]
            node = 2 * node + 1 + right
        leaf = self.value.ravel()[np.arange(n_trees, dtype=np.int64) * (inner + 1) + node - inner]
        sums = np.add.reduceat(leaf, self.segments[:-1], axis=1)
        return sums + self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature.tolist(), "threshold": [[_f(v) for v in row] for row in self.threshold],
                "value": self.value.tolist(), "segments": self.segments.tolist(), "baseline": self.baseline.tolist(),
                "depth": self.depth}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TreeEnsemble:
        threshold = np.array([[np.inf if v is None else v for v in row] for row in d["threshold"]], np.float64)
        return cls(np.asarray(d["feature"], np.int64), threshold, np.asarray(d["value"], np.float64),
                   np.asarray(d["segments"], np.int64), np.asarray(d["baseline"], np.float64), int(d["depth"]))


def _f(v: float) -> float | None:
    return None if np.isinf(v) else float(v)  # JSON has no infinity: null means "always go left"
