"""The predictor's public API for the gateway (import from ``predictor``). Imports neither torch nor transformers.

    from predictor import load_default, OnlinePredictor, open_store
    p = load_default()                                  # the shipped artifact
    p.predict(model="smollm2", messages=[...], max_tokens=256).p50     # -> Prediction(p50, p90), in tokens
    online = OnlinePredictor(p, open_store(redis_url=...))           # learns from completions
    online.observe(make_request(model=..., messages=...), 173)       # O(1), never blocks
"""

from __future__ import annotations

from pathlib import Path

from predictor.model import Predictor, load

DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "default.json.gz"


def load_default() -> Predictor:
    """The artifact shipped in the package (rebuild: see docs/predictor.md)."""
    return load(DEFAULT_ARTIFACT)


def load_path(path: str | Path | None = None) -> Predictor:
    """An artifact from ``path``, or the default one when ``path`` is empty."""
    return load(path) if path else load_default()
