"""``PredictorEstimator``: the learned output-length predictor (``predictor`` package) behind the gateway's
``OutputEstimator`` protocol.

``--predictor default`` loads the predictor package's default artifact (``predictor.model.load_default()`` or the
path ``predictor.model.DEFAULT_ARTIFACT``, whichever the package provides); ``--predictor PATH`` loads that
artifact with ``predictor.model.load``. Any failure raises, and ``gateway.estimator.load_estimator`` falls back to
the history estimator. Observed lengths go to the predictor's ``observe`` when it has one (online adaptation) and
always to a history estimator, which answers for a request the predictor cannot score.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.estimator import HistoryEstimator, OutputEstimate

log = logging.getLogger(__name__)


def _load_predictor(spec: str) -> Any:
    from predictor import model as pm

    if spec != "default":
        return pm.load(Path(spec))
    if hasattr(pm, "load_default"):
        return pm.load_default()
    default = getattr(pm, "DEFAULT_ARTIFACT", None)
    if default is None:
        raise FileNotFoundError("the predictor package has no default artifact")
    return pm.load(Path(default))


class PredictorEstimator:
    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.fallback = HistoryEstimator()
        self._warned = False

    @classmethod
    def load(cls, spec: str) -> PredictorEstimator:
        est = cls(_load_predictor(spec))
        log.info("output lengths from the learned predictor (%s)", spec)
        return est

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
            try:
                observe(model=model, body=body, output_tokens=output_tokens)
            except Exception as e:  # noqa: BLE001 - online learning is best effort
                log.debug("predictor observe failed: %s", e)
