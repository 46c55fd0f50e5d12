"""Grouped cross-validation of the candidate heads against the baselines, request-path latency, and a plot.

Every number in one report comes from the same run: the same folds (by prompt, never by row) for every candidate
and every baseline, so the ratios between them are fair.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from predictor.baselines import BASELINES
from predictor.features import Request
from predictor.metrics import length_metrics, per_model
from predictor.model import Predictor
from predictor.train import Prepared, TrainConfig, fit, group_folds


def cross_validate(data: Prepared, config: TrainConfig, heads: Sequence[str], folds: int = 5,
                   progress: Any = None) -> dict[str, Any]:
    """Out-of-fold p50/p90 for each head and p50 for each baseline; metrics overall and per served model."""
    n = len(data.log_y)
    preds = {h: (np.zeros(n), np.zeros(n)) for h in heads}
    base = {b: np.zeros(n) for b in BASELINES}
    for tr, te in group_folds(data.groups, folds, config.seed + 1):
        train, test = data.subset(tr), data.subset(te)
        for name, baseline in BASELINES.items():
            base[name][te] = baseline(train, test)
        for head in heads:
            model = fit(train, replace(config, head=head))
            out = model.predict_features_batch(test.features)
            preds[head][0][te] = [p.p50 for p in out]
            preds[head][1][te] = [p.p90 for p in out]
            if progress is not None:
                progress.update(1)
    y = np.expm1(data.log_y)
    report: dict[str, Any] = {"folds": folds, "rows": n, "prompts": len(set(data.groups.tolist())),
                              "candidates": {}, "baselines": {}}
    for head, (p50, p90) in preds.items():
        report["candidates"][head] = {**length_metrics(y, p50, p90),
                                      "per_model": per_model(y, p50, p90, data.models)}
    for name, p50 in base.items():
        report["baselines"][name] = length_metrics(y, p50)
    ref = report["baselines"]["per_model_median"]["mae"]
    for m in report["candidates"].values():
        m["mae_vs_per_model_median"] = m["mae"] / ref
    report["_oof"] = {h: (y, p[0], p[1]) for h, p in preds.items()}
    return report


def latency(predictor: Predictor, requests: Sequence[Request], batch: int = 32, repeats: int = 2000,
            seed: int = 0) -> dict[str, Any]:
    """Wall-clock microseconds of single predictions (features included) and of batches of ``batch``."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(requests), size=repeats)
    for i in picks[:100]:  # warm caches (n-gram slots, stats vectors) as a running gateway would have them
        predictor.predict_request(requests[i])
    single = np.empty(repeats)
    cpu = np.empty(repeats)
    for j, i in enumerate(picks):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        predictor.predict_request(requests[i])
        single[j] = time.perf_counter() - t0
        cpu[j] = time.thread_time() - c0
    batches = np.empty(max(1, repeats // batch))
    for j in range(batches.size):
        chunk = [requests[i] for i in rng.integers(0, len(requests), size=batch)]
        t0 = time.perf_counter()
        predictor.predict_batch(chunk)
        batches[j] = time.perf_counter() - t0
    us = 1e6
    # Wall time includes the waits of a loaded machine (other processes on the same cores); CPU time is the cost
    # of the prediction itself. Both are reported, with the load average, so a reader can judge.
    return {"single_p50_us": float(np.percentile(single, 50) * us), "single_p99_us": float(np.percentile(single, 99) * us),
            "single_cpu_p50_us": float(np.percentile(cpu, 50) * us),
            "single_cpu_p99_us": float(np.percentile(cpu, 99) * us), "loadavg": os.getloadavg(),
            "batch_size": batch, "batch_p50_us": float(np.percentile(batches, 50) * us),
            "batch_p99_us": float(np.percentile(batches, 99) * us),
            "batch_per_request_p50_us": float(np.percentile(batches, 50) * us / batch), "repeats": repeats}


def plot(y: np.ndarray, p50: np.ndarray, p90: np.ndarray, title: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(y, p50, s=3, alpha=0.25, label="p50 (out-of-fold)")
    order = np.argsort(y)
    ax.plot(y[order], y[order], "k--", lw=1, label="predicted = true")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("true output tokens")
    ax.set_ylabel("predicted output tokens")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
