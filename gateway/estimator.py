"""Output-length estimators: the decode share of a request's expected work (DESIGN.md section 4).

The gateway asks ``estimate`` once per request, on the event loop, before routing (so it must take microseconds,
not milliseconds), and reports the true length to ``observe`` after completion (for online adaptation; the true
length never reaches routing). ``--predictor``:

- ``default``: the learned predictor of the ``predictor`` package with its bundled model (``PredictorEstimator``);
- ``PATH``: the same with a model file or folder trained by ``foresight predictor train``;
- ``off``: ``HistoryEstimator``, the documented non-learned fallback: per model, the p50/p90 of the last 512 observed
  output lengths (a prior of 128/512 tokens before any observation), capped by the request's ``max_tokens``.

When the predictor package cannot be imported or its model cannot be loaded, ``load_estimator`` logs why and
falls back to ``HistoryEstimator``, so the gateway always has an estimate.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutputEstimate:
    p50: float
    p90: float
    source: str = "history"


@runtime_checkable
class OutputEstimator(Protocol):
    """Contract: ``estimate`` is cheap and never raises on odd bodies; ``observe`` may update internal state."""

    def estimate(self, model: str, body: Mapping[str, Any], prompt_text: str, prompt_tokens: int) -> OutputEstimate:
        ...

    def observe(self, model: str, body: Mapping[str, Any], prompt_text: str, prompt_tokens: int,
                output_tokens: int) -> None:
        ...


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _quantile(sorted_values: list[int], q: float) -> float:
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


class HistoryEstimator:
    """Quantiles of recently observed output lengths per model, capped by ``max_tokens``."""

    def __init__(self, window: int = 512, prior_p50: float = 128.0, prior_p90: float = 512.0) -> None:
        self.window = window
        self.prior = (prior_p50, prior_p90)
        self._seen: dict[str, deque[int]] = {}
        self._count: dict[str, int] = {}
        self._cache: dict[str, tuple[float, float]] = {}

    def estimate(self, model: str, body: Mapping[str, Any], prompt_text: str, prompt_tokens: int) -> OutputEstimate:
        p50, p90 = self._cache.get(model, self.prior)
        cap = max_tokens_of(body)
        if cap is not None:
            p50, p90 = min(p50, cap), min(p90, cap)
        return OutputEstimate(p50, p90, "history")

    def observe(self, model: str, body: Mapping[str, Any], prompt_text: str, prompt_tokens: int,
                output_tokens: int) -> None:
        seen = self._seen.setdefault(model, deque(maxlen=self.window))
        seen.append(int(output_tokens))
        n = self._count[model] = self._count.get(model, 0) + 1
        # Re-sorting is O(window log window); amortise it over a few observations. (Counted by observations,
        # not by the window's length: that stops growing once the window is full.)
        if n < 16 or n % 8 == 0:
            ordered = sorted(seen)
            self._cache[model] = (_quantile(ordered, 0.5), _quantile(ordered, 0.9))


def load_estimator(spec: str | None, redis_url: str | None = None, prefix: str = "foresight:") -> OutputEstimator:
    """The estimator for ``--predictor`` (``default``, ``off`` or a path); see the module docstring. With
    ``redis_url`` the learned predictor's online observations are shared through that Redis."""
    if not spec or spec == "off":
        return HistoryEstimator()
    try:
        from gateway.predictor_adapter import PredictorEstimator

        return PredictorEstimator.load(spec, redis_url, prefix)
    except Exception as e:  # noqa: BLE001 - any failure to load a learned model degrades to the fallback
        log.warning("predictor %r unavailable (%s: %s); using the history estimator", spec, type(e).__name__, e)
        return HistoryEstimator()
