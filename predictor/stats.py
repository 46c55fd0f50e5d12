"""Per-served-model length statistics: the strongest single signal, and the part that learns online.

Every model name maps to ``(mean, std, spread)`` of its log output lengths (``log1p(tokens)``), where ``spread`` is
the gap between the 90th percentile and the median. Models with few observations are shrunk towards the prior
(the statistics over all models), so an unknown model predicts like an average model until it has been observed.
Instances are immutable: the online learner builds a new table and swaps the reference, so readers never see a
half-updated table and need no lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STAT_NAMES: tuple[str, ...] = ("model_log_mean", "model_log_std", "model_log_spread90")
PRIOR_WEIGHT = 5.0  # observations at which a model's own statistics weigh as much as the prior (tuned by bench adapt)


@dataclass(frozen=True, slots=True)
class ModelStat:
    count: int
    mean: float
    std: float
    spread: float

    @classmethod
    def of(cls, log_lengths: np.ndarray) -> ModelStat:
        v = np.asarray(log_lengths, np.float64)
        return cls(int(v.size), float(v.mean()), float(v.std()),
                   float(np.quantile(v, 0.9) - np.quantile(v, 0.5)))


@dataclass(frozen=True)
class StatsTable:
    models: Mapping[str, ModelStat]
    prior: ModelStat
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def fit(cls, models: Iterable[str], log_lengths: np.ndarray) -> StatsTable:
        names = np.asarray(list(models))
        log_lengths = np.asarray(log_lengths, np.float64)
        per = {str(m): ModelStat.of(log_lengths[names == m]) for m in sorted(set(names.tolist()))}
        # The prior averages models, not rows, so a model with many rows does not dominate what "unknown" means.
        prior = ModelStat(0, float(np.mean([s.mean for s in per.values()])),
                          float(np.mean([s.std for s in per.values()])),
                          float(np.mean([s.spread for s in per.values()])))
        return cls(per, prior)

    def vector(self, model: str) -> np.ndarray:
        """``STAT_NAMES`` for ``model``, shrunk towards the prior by its observation count (memoised)."""
        hit = self._cache.get(model)
        if hit is not None:
            return hit
        s = self.models.get(model)
        p = self.prior
        if s is None:
            vec = np.array([p.mean, p.std, p.spread])
        else:
            w = s.count / (s.count + PRIOR_WEIGHT)
            vec = np.array([w * s.mean + (1 - w) * p.mean, w * s.std + (1 - w) * p.std,
                            w * s.spread + (1 - w) * p.spread])
        self._cache[model] = vec
        return vec

    def with_models(self, updates: Mapping[str, ModelStat]) -> StatsTable:
        """A new table with ``updates`` replacing (or adding) those models."""
        return StatsTable({**self.models, **updates}, self.prior)

    def to_dict(self) -> dict[str, Any]:
        return {"prior": _stat_dict(self.prior), "models": {m: _stat_dict(s) for m, s in sorted(self.models.items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StatsTable:
        return cls({m: ModelStat(**s) for m, s in d["models"].items()}, ModelStat(**d["prior"]))


def _stat_dict(s: ModelStat) -> dict[str, Any]:
    return {"count": s.count, "mean": round(s.mean, 6), "std": round(s.std, 6), "spread": round(s.spread, 6)}
