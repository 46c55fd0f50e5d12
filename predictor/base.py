"""The seam between features and the final length model ("head"), and the prediction the gateway receives.

A head sees one row per request: ``[model statistics (STAT_NAMES) | text score | dense features (DENSE_NAMES)]``
(see ``head_row``) and returns the log1p of the median and of the 90th percentile of the output length. At training
time the text score column holds out-of-fold scores, so a head learns how far to trust the score on prompts the
scorer has not seen, and its quantiles are calibrated on the same kind of error as at serving time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from predictor.features import DENSE_NAMES
from predictor.stats import STAT_NAMES

HEAD_COLUMNS: tuple[str, ...] = (*STAT_NAMES, "text_score", *DENSE_NAMES)
COL_MEAN, COL_STD, COL_SPREAD, COL_TEXT = 0, 1, 2, 3


def head_row(stats: np.ndarray, text_score: float, dense: np.ndarray) -> np.ndarray:
    return np.concatenate((stats, (text_score,), dense))


@dataclass(frozen=True, slots=True)
class Prediction:
    """Predicted output tokens: median and 90th percentile, each in [1, max_tokens]; p90 >= p50."""

    p50: int
    p90: int

    def to_dict(self) -> dict[str, int]:
        return {"p50": self.p50, "p90": self.p90}


class Head(Protocol):
    """A final length model. Implementations are immutable after ``fit`` and safe to call from many threads."""

    name: ClassVar[str]

    @classmethod
    def fit(cls, Z: np.ndarray, log_y: np.ndarray, seed: int, trees: int = 150) -> Head:
        """Fit on head rows ``Z`` (n, len(HEAD_COLUMNS)) and targets ``log1p(tokens)``; deterministic per seed.
        ``trees`` is the boosting budget of tree heads (others ignore it)."""
        ...

    def predict_log(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log1p p50, log1p p90) for each row of ``Z``."""
        ...

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Head: ...
