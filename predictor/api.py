"""The predictor's public API for the gateway (import from ``predictor``). Imports neither torch nor transformers.

    from predictor import load_default, OnlinePredictor, open_store
    p = load_default()                                  # the shipped artifact
    p.predict(model="smollm2", messages=[...], max_tokens=256).p50     # -> Prediction(p50, p90), in tokens
    online = OnlinePredictor(p, open_store(redis_url=...))           # learns from completions
    online.observe(make_request(model=..., messages=...), 173)       # O(1), never blocks
"""

from __future__ import annotations

from pathlib import Path

from predictor.model import DEFAULT_ARTIFACT, Predictor, load, load_default
from predictor.online import OnlinePredictor
from predictor.store import open_store

__all__ = ["DEFAULT_ARTIFACT", "load_default", "load_online", "load_path"]


def load_online(path: str | Path | None = None, *, redis_url: str | None = None, store_path: str | None = None,
                prefix: str = "foresight:") -> OnlinePredictor:
    """A predictor that learns from ``observe``: the artifact at ``path`` (default: the shipped one), with what was
    observed before kept in Redis (``redis_url``, shared by gateways) or in a file (``store_path``), or in memory
    only when neither is given. Call ``close()`` on shutdown to persist the last observations."""
    return OnlinePredictor(load_path(path), open_store(store_path, redis_url, prefix))


def load_path(path: str | Path | None = None) -> Predictor:
    """An artifact from ``path``, or the default one when ``path`` is empty."""
    return load(path) if path else load_default()
