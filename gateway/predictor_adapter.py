"""``PredictorEstimator``: the learned output-length predictor (``predictor`` package) behind the gateway's
``OutputEstimator`` protocol.

``--predictor default`` loads the predictor package's shipped artifact, ``--predictor PATH`` that artifact, both
wrapped in the package's online learner (``predictor.load_online``): completed requests' true lengths go to its
``observe`` (O(1); a background thread refits and swaps atomically), and what it learned is kept in the gateway's
Redis when one is configured (shared by all gateways, surviving restarts), else in memory. Any failure to load
raises, and ``gateway.estimator.load_estimator`` falls back to the history estimator. Observed lengths also always
go to a history estimator, which answers for a request the predictor cannot score.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.estimator import HistoryEstimator, OutputEstimate, max_tokens_of

log = logging.getLogger(__name__)


def _load_predictor(spec: str, redis_url: str | None = None, prefix: str = "foresight:") -> Any:
    from predictor import load_online

    return load_online(None if spec == "default" else Path(spec), redis_url=redis_url, prefix=prefix)


class PredictorEstimator:
    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.fallback = HistoryEstimator()
        self._warned = False

    @classmethod
    def load(cls, spec: str, redis_url: str | None = None, prefix: str = "foresight:") -> PredictorEstimator:
        est = cls(_load_predictor(spec, redis_url, prefix))
        log.info("output lengths from the learned predictor (%s, online store: %s)", spec,
                 "redis" if redis_url else "memory")
        return est

    def close(self) -> None:
        """Stop the online learner and persist what it learned (blocking: call it off the event loop)."""
        close = getattr(self.predictor, "close", None)
        if close is not None:
            close()

    def estimate(self, model: str, body: Mapping[str, Any], prompt_text: str, prompt_tokens: int) -> OutputEstimate:
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        try:
            pred = self.predictor.predict(
                model=model, messages=body.get("messages"), prompt=body.get("prompt"),
                max_tokens=max_tokens if isinstance(max_tokens, int) else None,
                temperature=body.get("temperature") if isinstance(body.get("temperature"), int | float) else None,
                stop=body.get("stop"))
            return OutputEstimate(float(pred.p50), float(pred.p90), "predictor")
        except Exception as e:  # noqa: BLE001 - an odd request must never fail routing
            if not self._warned:
                log.warning("predictor failed on a request (%s: %s); using history for such requests",
                            type(e).__name__, e)
                self._warned = True
            return self.fallback.estimate(model, body, prompt_text, prompt_tokens)

    def observe(self, model: str, body: Mapping[str, Any], prompt_text: str, prompt_tokens: int,
                output_tokens: int) -> None:
        self.fallback.observe(model, body, prompt_text, prompt_tokens, output_tokens)
        observe = getattr(self.predictor, "observe", None)
        if observe is not None:
            # A completion that reached max_tokens was cut: its length is only a lower bound, and learning from
            # it would bias the predictor short, so the learner is told it did not finish.
            cap = max_tokens_of(body)
            try:
                observe(model=model, body=body, output_tokens=output_tokens,
                        finished=cap is None or output_tokens < cap)
            except Exception as e:  # noqa: BLE001 - online learning is best effort
                log.debug("predictor observe failed: %s", e)
