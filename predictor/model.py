"""The predictor: model statistics + text score + head, and its artifact (gzipped JSON, deterministic bytes).

Contract: ``Predictor.predict_request`` is thread-safe and lock-free; ``stats`` may be replaced at any time by the
online learner (a single reference assignment), and a prediction reads it once. ``load`` refuses an artifact
written under another artifact version or feature schema with ``ArtifactError`` saying what differs and how to
rebuild it.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from predictor.base import Head, Prediction, head_row
from predictor.features import FEATURE_SCHEMA, Features, Request, extract, make_request
from predictor.heads import HEADS
from predictor.neighbours import NeighbourScorer
from predictor.stats import StatsTable
from predictor.text import TextScorer

ARTIFACT_VERSION = 2  # 2: the nearest-training-prompt score (predictor/neighbours.py)
ARTIFACT_KIND = "foresight-predictor"
DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "default.json.gz"
REBUILD_HINT = "rebuild it with `foresight predictor train` (see docs/predictor.md)"


class ArtifactError(RuntimeError):
    """An artifact that cannot be used by this version of the predictor."""


class Predictor:
    def __init__(self, stats: StatsTable, text: TextScorer, head: Head, meta: dict[str, Any],
                 neighbours: NeighbourScorer | None = None) -> None:
        self.stats = stats
        self.text = text
        self.neighbours = neighbours
        self.head = head
        self.meta = meta

    # --- the request path ---------------------------------------------------------------------------------------
    def predict(self, *, model: str, messages: Sequence[dict[str, Any]] | None = None,
                prompt: str | Sequence[str] | None = None, max_tokens: int | None = None,
                temperature: float | None = None, stop: str | Sequence[str] | None = None) -> Prediction:
        """Predict from the fields of an OpenAI chat/completions request body."""
        return self.predict_request(make_request(model=model, messages=messages, prompt=prompt,
                                                 max_tokens=max_tokens, temperature=temperature, stop=stop))

    def predict_request(self, req: Request) -> Prediction:
        return self.predict_features(extract(req))

    def predict_features(self, f: Features) -> Prediction:
        z = self.row(f, self.stats)[None, :]
        p50, p90 = self.head.predict_log(z)
        return _clamp(float(p50[0]), float(p90[0]), f.max_tokens)

    def predict_batch(self, requests: Sequence[Request]) -> list[Prediction]:
        return self.predict_features_batch([extract(r) for r in requests])

    def predict_features_batch(self, feats: Sequence[Features]) -> list[Prediction]:
        if not feats:
            return []
        stats = self.stats
        Z = np.stack([self.row(f, stats) for f in feats])
        p50, p90 = self.head.predict_log(Z)
        return [_clamp(float(a), float(b), f.max_tokens) for a, b, f in zip(p50, p90, feats, strict=True)]

    def row(self, f: Features, stats: StatsTable) -> np.ndarray:
        score = self.text.score(f)
        if self.neighbours is not None:
            score = self.neighbours.combine(score, f)
        return head_row(stats.vector(f.model), score, f.dense)

    # --- the artifact -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": ARTIFACT_KIND, "artifact_version": ARTIFACT_VERSION, "feature_schema": FEATURE_SCHEMA,
                "head": self.head.name, "meta": self.meta, "stats": self.stats.to_dict(),
                "text": self.text.to_dict(), "head_params": self.head.to_dict(),
                "neighbours": None if self.neighbours is None else self.neighbours.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> Predictor:
        if d.get("kind") != ARTIFACT_KIND:
            raise ArtifactError(f"{source} is not a Foresight predictor artifact")
        if d.get("artifact_version") != ARTIFACT_VERSION:
            raise ArtifactError(f"{source} has artifact version {d.get('artifact_version')!r}, this predictor reads "
                                f"version {ARTIFACT_VERSION}; {REBUILD_HINT}")
        if d.get("feature_schema") != FEATURE_SCHEMA:
            raise ArtifactError(f"{source} was trained on feature schema {d.get('feature_schema')!r}, this predictor "
                                f"extracts {FEATURE_SCHEMA!r}; {REBUILD_HINT}")
        head_cls = HEADS.get(d.get("head", ""))
        if head_cls is None:
            raise ArtifactError(f"{source} uses unknown head {d.get('head')!r} (known: {sorted(HEADS)})")
        return cls(StatsTable.from_dict(d["stats"]), TextScorer.from_dict(d["text"]),
                   head_cls.from_dict(d["head_params"]), dict(d.get("meta", {})),
                   NeighbourScorer.from_dict(d["neighbours"]) if d.get("neighbours") else None)

    def to_bytes(self) -> bytes:
        raw = orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
        return gzip.compress(raw, compresslevel=9, mtime=0)  # mtime=0: the same model gives the same bytes

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)
        return path


def load(path: str | Path) -> Predictor:
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes())
        data = orjson.loads(raw)
    except FileNotFoundError:
        raise ArtifactError(f"predictor artifact not found: {path}; {REBUILD_HINT}") from None
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not a readable predictor artifact ({exc}); {REBUILD_HINT}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} is not a Foresight predictor artifact")
    return Predictor.from_dict(data, source=str(path))


def load_default() -> Predictor:
    """The artifact shipped in the package (rebuild: ``foresight predictor train``, see docs/predictor.md)."""
    return load(DEFAULT_ARTIFACT)


def _clamp(log_p50: float, log_p90: float, max_tokens: int | None) -> Prediction:
    p50 = max(1, int(round(math.expm1(min(log_p50, 20.0)))))
    p90 = max(p50, int(round(math.expm1(min(log_p90, 20.0)))))
    if max_tokens:
        p50, p90 = min(p50, max_tokens), min(p90, max_tokens)
    return Prediction(p50, p90)
