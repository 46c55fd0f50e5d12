"""Fitting a predictor: statistics per model, a text score with out-of-fold estimates, then the head.

Deterministic for a given data file, tokenizer and seed: fold assignment is by prompt group in file order, the
solvers are deterministic, and the artifact is serialised with sorted keys and a zero gzip time stamp.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictor.base import head_row
from predictor.data import Example
from predictor.features import FEATURE_SCHEMA, Features, extract
from predictor.heads import DEFAULT_HEAD, HEADS
from predictor.model import ARTIFACT_VERSION, Predictor
from predictor.neighbours import K, NeighbourScorer, fit_blend
from predictor.stats import StatsTable
from predictor.text import TextScorer


@dataclass(frozen=True)
class TrainConfig:
    head: str = DEFAULT_HEAD
    alpha: float = 30.0  # ridge strength on the text score; chosen by grouped CV (docs/predictor.md)
    inner_folds: int = 5
    trees: int = 150  # boosting iterations of the stack head, per quantile
    neighbours: int = K  # k of the nearest-training-prompt score blended into the text score; 0 turns it off
    seed: int = 0


@dataclass
class Prepared:
    """Examples turned into arrays once, so cross-validation does not re-extract features per fold."""

    features: list[Features]
    log_y: np.ndarray
    models: np.ndarray
    groups: np.ndarray

    @classmethod
    def of(cls, examples: Sequence[Example]) -> Prepared:
        return cls([extract(e.request) for e in examples], np.log1p(np.array([e.tokens for e in examples], float)),
                   np.array([e.request.model for e in examples]), np.array([e.group for e in examples]))

    def subset(self, idx: np.ndarray) -> Prepared:
        return Prepared([self.features[i] for i in idx], self.log_y[idx], self.models[idx], self.groups[idx])


def group_folds(groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds that never split a group; groups are shuffled by ``seed`` then dealt round-robin."""
    unique = list(dict.fromkeys(groups.tolist()))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[g]: i % k for i, g in enumerate(order)}
    assign = np.array([fold_of[g] for g in groups.tolist()])
    return [(np.flatnonzero(assign != f), np.flatnonzero(assign == f)) for f in range(k)]


def fit(data: Prepared, config: TrainConfig, meta: dict[str, Any] | None = None, progress: Any = None) -> Predictor:
    """Train a predictor on ``data``; ``progress`` (a tqdm bar or None) advances once per inner fold and twice more."""
    if config.head not in HEADS:
        raise ValueError(f"unknown head {config.head!r}; choose from {sorted(HEADS)}")
    stats = StatsTable.fit(data.models, data.log_y)
    base = np.array([stats.vector(m)[0] for m in data.models])
    residual = data.log_y - base
    oof = np.zeros_like(residual)
    knn = np.zeros_like(residual)
    n_groups = len(set(data.groups.tolist()))
    for tr, te in group_folds(data.groups, min(config.inner_folds, n_groups), config.seed):
        scorer = TextScorer.fit([data.features[i] for i in tr], residual[tr], config.alpha)
        oof[te] = scorer.score_batch([data.features[i] for i in te])
        if config.neighbours:
            # Neighbours from the other inner folds only: a prompt never sees its own length.
            near = _neighbours(data, residual, tr, config.neighbours)
            knn[te] = [near.raw(data.features[i]) for i in te]
        _tick(progress)
    text = TextScorer.fit(data.features, residual, config.alpha)
    neighbours = None
    if config.neighbours:
        neighbours = _neighbours(data, residual, np.arange(len(residual)), config.neighbours)
        neighbours.blend = fit_blend(oof, knn, residual)
        oof = np.array([neighbours.blend[0] * r + neighbours.blend[1] * n + neighbours.blend[2]
                        for r, n in zip(oof, knn, strict=True)])
    _tick(progress)
    Z = np.stack([head_row(stats.vector(m), s, f.dense) for m, s, f in zip(data.models, oof, data.features,
                                                                           strict=True)])
    head = HEADS[config.head].fit(Z, data.log_y, config.seed, trees=config.trees)
    _tick(progress)
    info = {"config": asdict(config), "rows": int(len(data.log_y)), "prompts": n_groups,
            "models": sorted(set(data.models.tolist())), "artifact_version": ARTIFACT_VERSION,
            "feature_schema": FEATURE_SCHEMA, **(meta or {})}
    trained = Predictor(stats, text, head, info, neighbours)
    # Round-trip through the serialised form, so the in-memory model predicts exactly like the saved artifact.
    return Predictor.from_dict(trained.to_dict())


def _neighbours(data: Prepared, residual: np.ndarray, rows: np.ndarray, k: int) -> NeighbourScorer:
    """Neighbours over the distinct prompts of ``rows``, each with its mean residual over its rows."""
    first: dict[Any, int] = {}
    total: dict[Any, float] = {}
    count: dict[Any, int] = {}
    for i in rows.tolist():
        g = data.groups[i]
        first.setdefault(g, i)
        total[g] = total.get(g, 0.0) + float(residual[i])
        count[g] = count.get(g, 0) + 1
    keys = list(first)
    return NeighbourScorer.fit([data.features[first[g]] for g in keys],
                               np.array([total[g] / count[g] for g in keys]), k=k)


def steps(config: TrainConfig) -> int:
    return config.inner_folds + 2


def _tick(progress: Any) -> None:
    if progress is not None:
        progress.update(1)


def tokenizer_info(spec: str) -> tuple[Any, dict[str, Any]]:
    """Load a tokenizer from a model name (``smollm2``), a model folder, or a tokenizer.json; describe it."""
    from tokenizers import Tokenizer

    path = Path(spec).expanduser()
    if path.is_file():
        file = path
    else:
        if not path.is_dir():
            from replicas.models import resolve_model

            path = resolve_model(spec)
        file = path / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json for {spec!r} (looked at {file})")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    return Tokenizer.from_file(str(file)), {"name": spec if not Path(spec).exists() else file.parent.name,
                                            "sha256": digest}
