"""The text score: a ridge regression of the log-length residual (after the model's mean) on the prompt.

Inputs are the hashed word n-grams and the standardised dense features of ``predictor.features``. The score says
how much longer or shorter than usual the prompt makes the answer, in log space and independent of the served
model, which is why one score learned on many models transfers to a model never seen in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from predictor.features import N_HASHED, Features

if TYPE_CHECKING:
    import scipy.sparse as sp


EXTRA_SCALE = 2.0  # optional extra inputs (unit-norm embeddings) enter unstandardised, scaled by this


def text_inputs(f: Features) -> np.ndarray:
    return f.dense if f.extra is None else np.concatenate((f.dense, f.extra))


def design(features: Sequence[Features], mu: np.ndarray, sd: np.ndarray) -> sp.csr_matrix:
    """Rows of [hashed n-grams | standardised dense] for training (CSR)."""
    import scipy.sparse as sp  # training only: the request path never builds a matrix

    indptr = [0]
    indices: list[int] = []
    values: list[float] = []
    for f in features:
        indices.extend(f.sparse.keys())
        values.extend(f.sparse.values())
        indptr.append(len(indices))
    text = sp.csr_matrix((np.asarray(values), np.asarray(indices, np.int64), np.asarray(indptr)),
                         shape=(len(features), N_HASHED))
    dense = (np.stack([text_inputs(f) for f in features]) - mu) / sd
    return sp.hstack([text, sp.csr_matrix(dense)], format="csr")


@dataclass(frozen=True)
class TextScorer:
    sparse: dict[int, float]
    dense: np.ndarray  # weights on standardised dense features
    mu: np.ndarray
    sd: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, features: Sequence[Features], residual: np.ndarray, alpha: float,
            weight: np.ndarray | None = None) -> TextScorer:
        from sklearn.linear_model import Ridge

        dense = np.stack([text_inputs(f) for f in features])
        n = len(features[0].dense)
        mu = np.zeros(dense.shape[1])
        sd = np.full(dense.shape[1], 1.0 / EXTRA_SCALE)
        mu[:n] = dense[:, :n].mean(axis=0)
        sd[:n] = dense[:, :n].std(axis=0)
        sd[:n][sd[:n] < 1e-9] = 1.0  # constant columns (e.g. max_tokens absent in training) keep a zero weight
        reg = Ridge(alpha=alpha, solver="sparse_cg", tol=1e-6, max_iter=2000)
        reg.fit(design(features, mu, sd), residual, sample_weight=weight)
        coef = reg.coef_
        text, dense_w = coef[:N_HASHED], coef[N_HASHED:]
        nz = np.flatnonzero(np.abs(text) > 1e-7)
        return cls({int(i): float(text[i]) for i in nz}, dense_w.astype(np.float64), mu, sd, float(reg.intercept_))

    def score(self, f: Features) -> float:
        w = self.sparse
        s = sum(w.get(k, 0.0) * v for k, v in f.sparse.items())
        return s + float(((text_inputs(f) - self.mu) / self.sd) @ self.dense) + self.intercept

    def score_batch(self, features: Sequence[Features]) -> np.ndarray:
        return np.array([self.score(f) for f in features])

    def to_dict(self) -> dict[str, Any]:
        keys = sorted(self.sparse)
        return {"sparse_index": keys, "sparse_weight": [round(self.sparse[k], 7) for k in keys],
                "dense": _r(self.dense), "mu": _r(self.mu), "sd": _r(self.sd), "intercept": round(self.intercept, 9)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextScorer:
        return cls(dict(zip(d["sparse_index"], d["sparse_weight"], strict=True)), np.asarray(d["dense"]),
                   np.asarray(d["mu"]), np.asarray(d["sd"]), float(d["intercept"]))


def _r(a: np.ndarray) -> list[float]:
    return [round(float(x), 9) for x in a]
