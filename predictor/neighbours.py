"""Nearest training prompts: the mean length tendency of the k most similar training instructions.

Why: the ridge text score generalises word by word; a prompt close to a few training prompts as a whole (same task,
same phrasing) tends to get answers of the same relative length. The neighbour score is the similarity-weighted
mean, over the ``k`` training prompts with the highest cosine similarity of IDF-weighted hashed n-grams, of each
prompt's mean log-length residual (its answers' log length minus each served model's mean, averaged over models).
It is blended with the ridge score by least squares on out-of-fold scores (``combine``).

Contract: ``fit`` sees training prompts only, and at training time the caller scores each prompt with neighbours
fitted on the other inner folds (never itself), or the score would leak the prompt's own length. The request path
uses numpy only: the prompts are stored as an inverted index (slot -> prompt ids and weights), and a query gathers
the postings of its ~30 slots and sums them with one ``bincount``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from predictor.features import Features

K = 10  # neighbours; 10 to 20 were best by grouped CV of the score (docs/predictor.md)


class NeighbourScorer:
    def __init__(self, idf: dict[int, float], start: dict[int, tuple[int, int]], ids: np.ndarray,
                 weights: np.ndarray, targets: np.ndarray, blend: tuple[float, float, float] = (1.0, 0.0, 0.0),
                 k: int = K) -> None:
        self.idf, self.start, self.ids, self.weights, self.targets = idf, start, ids, weights, targets
        self.blend, self.k = blend, k
        # Request-path arrays: slot -> row, and per row its IDF and postings span.
        self.row = {slot: i for i, slot in enumerate(idf)}
        self.idf_arr = np.array(list(idf.values()), np.float64)
        self.span_arr = np.array([start[slot] for slot in idf], np.int64).reshape(-1, 2)

    @classmethod
    def fit(cls, prompts: Sequence[Features], targets: np.ndarray, k: int = K) -> NeighbourScorer:
        """``prompts``: one Features per distinct training prompt; ``targets``: its mean log-length residual."""
        df: dict[int, int] = {}
        for f in prompts:
            for slot in f.sparse:
                df[slot] = df.get(slot, 0) + 1
        n = len(prompts)
        idf = {s: math.log((n + 1) / (c + 1)) + 1.0 for s, c in df.items()}
        postings: dict[int, tuple[list[int], list[float]]] = {}
        for p, f in enumerate(prompts):
            vec = _weighted(f.sparse, idf)
            for slot, w in vec.items():
                ids, ws = postings.setdefault(slot, ([], []))
                ids.append(p)
                ws.append(w)
        start: dict[int, tuple[int, int]] = {}
        all_ids: list[int] = []
        all_w: list[float] = []
        for slot in sorted(postings):
            ids, ws = postings[slot]
            start[slot] = (len(all_ids), len(all_ids) + len(ids))
            all_ids.extend(ids)
            all_w.extend(ws)
        return cls(idf, start, np.asarray(all_ids, np.int64), np.round(np.asarray(all_w), 6),
                   np.round(np.asarray(targets, np.float64), 7), k=k)

    def raw(self, f: Features) -> float:
        """Similarity-weighted mean target of the ``k`` nearest prompts (0.0, the average, when none shares a slot)."""
        get = self.row.get
        rows = np.fromiter((get(s, -1) for s in f.sparse), np.int64, len(f.sparse))
        known = rows >= 0
        if not known.any():
            return 0.0
        rows = rows[known]
        q = np.fromiter(f.sparse.values(), np.float64, len(f.sparse))[known] * self.idf_arr[rows]
        norm = math.sqrt(float(q @ q))
        if norm == 0.0:
            return 0.0
        q /= norm
        # Gather every posting of the query's slots with a handful of vectorised operations, whatever the number of
        # slots (a long prompt has hundreds; a Python loop over them cost a millisecond).
        spans = self.span_arr[rows]
        lengths = spans[:, 1] - spans[:, 0]
        ends = np.cumsum(lengths)
        at = np.repeat(spans[:, 0] - (ends - lengths), lengths) + np.arange(int(ends[-1]))
        ws = self.weights[at] * np.repeat(q, lengths)
        sims = np.bincount(self.ids[at], weights=ws, minlength=len(self.targets))
        k = min(self.k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        w = np.maximum(sims[top], 0.0) + 1e-6
        return float(w @ self.targets[top] / w.sum())

    def combine(self, ridge_score: float, f: Features) -> float:
        a, b, c = self.blend
        return a * ridge_score + b * self.raw(f) + c

    def to_dict(self) -> dict[str, Any]:
        slots = sorted(self.start)
        return {"slots": slots, "idf": [round(self.idf[s], 6) for s in slots],
                "spans": [list(self.start[s]) for s in slots], "ids": self.ids.tolist(),
                "weights": self.weights.tolist(), "targets": self.targets.tolist(),
                "blend": [round(x, 9) for x in self.blend], "k": self.k}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NeighbourScorer:
        slots = d["slots"]
        return cls(dict(zip(slots, d["idf"], strict=True)),
                   {s: (int(a), int(b)) for s, (a, b) in zip(slots, d["spans"], strict=True)},
                   np.asarray(d["ids"], np.int64), np.asarray(d["weights"], np.float64),
                   np.asarray(d["targets"], np.float64), tuple(d["blend"]), int(d["k"]))


def _weighted(sparse: dict[int, float], idf: dict[int, float]) -> dict[int, float]:
    vec = {s: v * idf[s] for s, v in sparse.items()}
    norm = math.sqrt(sum(v * v for v in vec.values()))
    return {s: v / norm for s, v in vec.items()} if norm > 0 else {}


def fit_blend(ridge: np.ndarray, knn: np.ndarray, residual: np.ndarray) -> tuple[float, float, float]:
    """Least-squares weights (ridge, neighbours, offset) on out-of-fold scores."""
    A = np.column_stack([ridge, knn, np.ones_like(ridge)])
    coef = np.linalg.lstsq(A, residual, rcond=None)[0]
    return float(coef[0]), float(coef[1]), float(coef[2])
