"""Latency summaries and plots of a replay: percentiles, SLO attainment, goodput.

Conventions (the same in every benchmark that replays): a request *meets the SLO* when it completed with
``ttft <= slo_ttft`` and ``tpot <= slo_tpot``; rejected and failed requests count as misses. ``slo_attainment`` is
met / all requests sent; ``goodput_rps`` is met requests per second of the offered window (the arrival span, or
the replay's wall time when the window is a single instant). Percentiles are over completed requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.replay_client import Result


def pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def meets(r: Result, slo_ttft: float, slo_tpot: float) -> bool:
    return (r.status == "ok" and r.ttft is not None and r.ttft <= slo_ttft
            and r.tpot is not None and r.tpot <= slo_tpot)


def summarize(results: Sequence[Result], wall_s: float, slo_ttft: float, slo_tpot: float) -> dict[str, Any]:
    ok = [r for r in results if r.status == "ok"]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tpot = [r.tpot for r in ok if r.tpot is not None and r.output_tokens > 1]
    e2e = [r.e2e for r in ok if r.e2e is not None]
    met = sum(1 for r in results if meets(r, slo_ttft, slo_tpot))
    arrivals = [r.arrival_s for r in results]
    span = (max(arrivals) - min(arrivals)) if len(arrivals) > 1 else 0.0
    window = span if span > 0 else wall_s
    n = len(results)
    lags = [r.start_lag for r in results]
    return {
        "requests": n,
        "completed": len(ok),
        "failed": sum(1 for r in results if r.status == "failed"),
        "rejected": sum(1 for r in results if r.status == "rejected"),
        "offered_rps": n / window if window > 0 else None,
        "ttft_p50": pct(ttft, 50), "ttft_p90": pct(ttft, 90), "ttft_p99": pct(ttft, 99),
        "tpot_p50": pct(tpot, 50), "tpot_p90": pct(tpot, 90),
        "e2e_p50": pct(e2e, 50), "e2e_p90": pct(e2e, 90),
        "slo_ttft_s": slo_ttft, "slo_tpot_s": slo_tpot,
        "slo_attainment": met / n if n else None,
        "goodput_rps": met / window if window > 0 else None,
        "duration_s": wall_s,
        "arrival_span_s": span,
        "send_lag_p99_s": pct(lags, 99),
        # Completed requests that did not generate the trace's output length: non-zero when lengths were forced
        # means the target did not pass the forcing on (its fleet then did different work than the others').
        "output_length_mismatch": sum(1 for r in ok if r.output_tokens != r.output_length),
        "errors_sample": sorted({r.error for r in results if r.error})[:5],
    }


def ttft_cdf_plot(series: dict[str, Sequence[float]], path: str | Path, title: str) -> Path:
    """One TTFT CDF line per label (log x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in series.items():
        if len(values):
            xs = np.sort(np.asarray(values, dtype=float))
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (s)")
    ax.set_ylabel("fraction of completed requests")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
