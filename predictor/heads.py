"""The candidate heads compared by ``foresight predictor eval --candidates``; the registry maps CLI names to classes.

- ``ridge``: median = model mean + text score (+ a fitted offset); p90 adds a multiple of the model's spread.
- ``bucket``: a multinomial logistic classifier over ten quantile buckets of the log-length residual (after the
  model's mean); the median and p90 are read off the predicted cumulative distribution.
- ``stack`` (default): gradient-boosted trees with a quantile loss, one for p50 and one for p90, over the same row,
  fitted to the residual after the model's mean.

Why residuals: trees and buckets cannot extrapolate, so a model longer-winded than every model in training would
be capped at the longest one. Adding the model's (online-learned) mean back keeps any model on its own scale.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from predictor.base import COL_MEAN, COL_SPREAD, COL_TEXT, Head
from predictor.trees import TreeEnsemble


class RidgeHead:
    name: ClassVar[str] = "ridge"

    def __init__(self, offset: float, k90: float) -> None:
        self.offset, self.k90 = offset, k90

    @classmethod
    def fit(cls, Z: np.ndarray, log_y: np.ndarray, seed: int, trees: int = 150) -> RidgeHead:
        resid = log_y - Z[:, COL_MEAN] - Z[:, COL_TEXT]
        offset = float(np.median(resid))
        spread = np.maximum(Z[:, COL_SPREAD], 1e-3)
        return cls(offset, float(np.quantile((resid - offset) / spread, 0.9)))

    def predict_log(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p50 = Z[:, COL_MEAN] + Z[:, COL_TEXT] + self.offset
        return p50, p50 + self.k90 * np.maximum(Z[:, COL_SPREAD], 1e-3)

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "k90": self.k90}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RidgeHead:
        return cls(float(d["offset"]), float(d["k90"]))


class BucketHead:
    name: ClassVar[str] = "bucket"
    n_buckets: ClassVar[int] = 10

    def __init__(self, edges: np.ndarray, coef: np.ndarray, intercept: np.ndarray, mu: np.ndarray,
                 sd: np.ndarray) -> None:
        self.edges, self.coef, self.intercept, self.mu, self.sd = edges, coef, intercept, mu, sd

    @classmethod
    def fit(cls, Z: np.ndarray, log_y: np.ndarray, seed: int, trees: int = 150) -> BucketHead:
        from sklearn.linear_model import LogisticRegression

        resid = log_y - Z[:, COL_MEAN]
        inner = np.quantile(resid, np.linspace(0, 1, cls.n_buckets + 1)[1:-1])
        edges = np.concatenate(([resid.min()], inner, [resid.max()]))
        labels = np.searchsorted(inner, resid, side="right")
        mu, sd = Z.mean(axis=0), Z.std(axis=0)
        sd[sd < 1e-9] = 1.0
        clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit((Z - mu) / sd, labels)
        coef = np.zeros((cls.n_buckets, Z.shape[1]))
        intercept = np.full(cls.n_buckets, -1e9)  # a bucket absent from training gets no probability
        coef[clf.classes_] = clf.coef_
        intercept[clf.classes_] = clf.intercept_
        return cls(edges, coef, intercept, mu, sd)

    def predict_log(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = ((Z - self.mu) / self.sd) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        cdf = np.cumsum(prob / prob.sum(axis=1, keepdims=True), axis=1)
        return Z[:, COL_MEAN] + self._quantile(cdf, 0.5), Z[:, COL_MEAN] + self._quantile(cdf, 0.9)

    def _quantile(self, cdf: np.ndarray, q: float) -> np.ndarray:
        # Interpolate linearly inside the bucket where the cumulative probability crosses q.
        idx = np.minimum((cdf < q).sum(axis=1), self.n_buckets - 1)
        rows = np.arange(cdf.shape[0])
        lo_cdf = np.where(idx > 0, cdf[rows, np.maximum(idx - 1, 0)], 0.0)
        frac = np.clip((q - lo_cdf) / np.maximum(cdf[rows, idx] - lo_cdf, 1e-12), 0.0, 1.0)
        return self.edges[idx] + frac * (self.edges[idx + 1] - self.edges[idx])

    def to_dict(self) -> dict[str, Any]:
        return {k: np.round(getattr(self, k), 9).tolist() for k in ("edges", "coef", "intercept", "mu", "sd")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BucketHead:
        return cls(*(np.asarray(d[k], np.float64) for k in ("edges", "coef", "intercept", "mu", "sd")))


class StackHead:
    name: ClassVar[str] = "stack"
    params: ClassVar[dict[str, Any]] = {"learning_rate": 0.05, "max_depth": 3, "min_samples_leaf": 40,
                                         "early_stopping": False}

    def __init__(self, trees: TreeEnsemble) -> None:
        self.trees = trees  # two outputs: p50 then p90

    @classmethod
    def fit(cls, Z: np.ndarray, log_y: np.ndarray, seed: int, trees: int = 150) -> StackHead:
        from sklearn.ensemble import HistGradientBoostingRegressor

        fitted = [HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=trees, random_state=seed,
                                                **cls.params)
                  .fit(Z, log_y - Z[:, COL_MEAN]) for q in (0.5, 0.9)]
        return cls(TreeEnsemble.from_sklearn(fitted))

    def predict_log(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if Z.shape[0] == 1:  # the request path: one row, a cheaper traversal
            one = self.trees.predict_one(Z[0])
            return Z[:, COL_MEAN] + one[0], Z[:, COL_MEAN] + one[1]
        out = self.trees.predict(Z)
        return Z[:, COL_MEAN] + out[:, 0], Z[:, COL_MEAN] + out[:, 1]

    def to_dict(self) -> dict[str, Any]:
        return {"trees": self.trees.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StackHead:
        return cls(TreeEnsemble.from_dict(d["trees"]))


HEADS: dict[str, type[Head]] = {h.name: h for h in (RidgeHead, BucketHead, StackHead)}  # type: ignore[misc]
DEFAULT_HEAD = "stack"
