"""Output-length predictor: what a request will cost in decode tokens, from what the gateway sees.

Public API (stable; see docs/predictor.md): ``load_default``, ``load``, ``load_path``, ``load_online``, ``Predictor.predict`` /
``predict_request`` / ``predict_batch``, ``make_request``, ``Prediction``, ``OnlinePredictor`` (``observe``),
``open_store``, ``ArtifactError``. Nothing here imports torch, transformers or scikit-learn.
"""

from predictor.api import DEFAULT_ARTIFACT, load_default, load_online, load_path
from predictor.base import Prediction
from predictor.features import Request, make_request
from predictor.model import ArtifactError, Predictor, load
from predictor.online import OnlinePredictor
from predictor.store import FileStore, RedisStore, open_store

__all__ = [
    "DEFAULT_ARTIFACT", "ArtifactError", "FileStore", "OnlinePredictor", "Prediction", "Predictor", "RedisStore",
    "Request", "load", "load_default", "load_online", "load_path", "make_request", "open_store",
]
