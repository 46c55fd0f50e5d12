"""Accuracy metrics of predicted output lengths against true ones (tokens)."""

from __future__ import annotations

from typing import Any

import numpy as np


def length_metrics(y: np.ndarray, p50: np.ndarray, p90: np.ndarray | None = None) -> dict[str, Any]:
    """Ranking (Kendall's tau-b, Spearman), error (MAE, median AE, hit rates) and, with p90, its calibration."""
    from scipy.stats import kendalltau, spearmanr

    y = np.asarray(y, float)
    p50 = np.asarray(p50, float)
    err = np.abs(p50 - y)
    out: dict[str, Any] = {
        "n": int(y.size),
        "kendall_tau": float(kendalltau(p50, y).statistic) if np.ptp(p50) > 0 else 0.0,
        "spearman": float(spearmanr(p50, y).statistic) if np.ptp(p50) > 0 else 0.0,
        "mae": float(err.mean()),
        "median_ae": float(np.median(err)),
        "within_25pct": float(np.mean(err <= 0.25 * y)),
        "within_50_tokens": float(np.mean(err <= 50)),
    }
    if p90 is not None:
        out["p90_calibration"] = float(np.mean(y <= np.asarray(p90, float)))
    return out


def per_model(y: np.ndarray, p50: np.ndarray, p90: np.ndarray | None, models: np.ndarray) -> dict[str, Any]:
    return {str(m): length_metrics(y[models == m], p50[models == m], None if p90 is None else p90[models == m])
            for m in sorted(set(models.tolist()))}
