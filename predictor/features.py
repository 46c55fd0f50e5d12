"""Request features: what the gateway sees, turned into numbers without a tokenizer or any model folder.

Contract: ``extract(request)`` is a pure function of the request (deterministic across processes: hashing uses
xxhash with a fixed seed, never Python's salted ``hash``), costs tens of microseconds for a chat prompt, and returns
the same features at training and at serving time, because training rows go through the same ``Request`` as live
requests (an AlpacaEval ``instruction`` is rendered as a one-message user conversation).

Bump ``FEATURE_SCHEMA`` whenever the meaning of any feature changes: artifacts record it and refuse to load under
another schema.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from predictor.cues import CUE_NAMES, cue_vector

FEATURE_SCHEMA = "foresight-predictor-features/1"
HASH_BITS = 18
N_HASHED = 1 << HASH_BITS
_MASK = N_HASHED - 1
# Characters of the last user message that feed the n-grams: the head says what is asked, the tail often says how
# (e.g. "answer in one word"); the middle of a pasted document says little about the answer's length.
HEAD_CHARS, TAIL_CHARS = 800, 300
CHARS_PER_TOKEN = 4.0  # rough English BPE ratio; only a prompt-length estimate, the model learns the real mapping

_WORD = re.compile(r"\w+|[^\w\s]")

DENSE_NAMES: tuple[str, ...] = (
    "log_chars", "log_words", "log_last_user_chars", "log_last_user_words", "turns", "lines", "questions",
    "has_max_tokens", "log_max_tokens", "temperature", "stops", *(f"cue_{c}" for c in CUE_NAMES),
)
N_DENSE = len(DENSE_NAMES)


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the gateway sees it. ``text`` is the rendered conversation (all turns, roles included)."""

    text: str
    last_user: str
    model: str
    turns: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    stops: int = 0

    @property
    def est_prompt_tokens(self) -> int:
        """A tokenizer-free prompt length estimate (what the gateway can afford on the request path)."""
        return max(1, int(len(self.text) / CHARS_PER_TOKEN))


def _content_text(content: Any) -> str:
    """OpenAI message content: a string, or a list of parts of which the text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def render_messages(messages: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """Render a chat as ``role: content`` lines; return (whole text, last user message)."""
    parts: list[str] = []
    last_user = ""
    for message in messages:
        if not isinstance(message, dict):
            continue  # the gateway validates bodies; here an odd entry must only be skipped, never raise
        role = str(message.get("role", "user"))
        text = _content_text(message.get("content"))
        parts.append(f"{role}: {text}")
        if role == "user":
            last_user = text
    return "\n".join(parts), last_user


def make_request(
    *,
    model: str,
    messages: Sequence[dict[str, Any]] | None = None,
    prompt: str | Sequence[str] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    stop: str | Sequence[str] | None = None,
) -> Request:
    """Build a ``Request`` from the fields of an OpenAI chat or completions body (``messages`` or ``prompt``)."""
    if messages is not None and not isinstance(messages, str | bytes):
        text, last_user = render_messages(messages)
        turns = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "user") or 1
    else:
        if prompt is None:
            prompt = messages if isinstance(messages, str) else ""
        if not isinstance(prompt, str):
            prompt = "\n".join(str(p) for p in prompt)
        text, last_user = render_messages([{"role": "user", "content": prompt}])
        turns = 1
    stops = 1 if isinstance(stop, str) else len(stop) if isinstance(stop, list | tuple) else 0
    return Request(text=text, last_user=last_user, model=str(model or ""), turns=turns,
                   max_tokens=_positive_int(max_tokens), temperature=_finite(temperature), stops=stops)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 1:
        return None
    return int(value)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


_SLOTS: dict[str, tuple[int, float]] = {}
_SLOT_CACHE_MAX = 200_000


def _slot(token: str) -> tuple[int, float]:
    """(index, sign) of a token; memoised because the same words come back request after request."""
    hit = _SLOTS.get(token)
    if hit is not None:
        return hit
    h = xxhash.xxh32_intdigest(token.encode("utf-8", "surrogatepass"))
    # The top bit gives a sign, so colliding features cancel on average instead of adding up.
    hit = (h & _MASK, 1.0 if h & 0x80000000 else -1.0)
    if len(_SLOTS) >= _SLOT_CACHE_MAX:
        _SLOTS.clear()
    _SLOTS[token] = hit
    return hit


def _words(text: str) -> list[str]:
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        text = text[:HEAD_CHARS] + " " + text[-TAIL_CHARS:]
    return _WORD.findall(text.lower())


def hashed_ngrams(words: Sequence[str]) -> dict[int, float]:
    """Signed hashed word unigrams and bigrams, L2-normalised. Keys are < ``N_HASHED``."""
    out: dict[int, float] = {}
    prev = "<s>"
    for word in words:
        for token in ("w:" + word, "b:" + prev + " " + word):
            idx, sign = _slot(token)
            out[idx] = out.get(idx, 0.0) + sign
        prev = word
    idx, sign = _slot("b:" + prev + " </s>")
    out[idx] = out.get(idx, 0.0) + sign
    norm = math.sqrt(sum(v * v for v in out.values())) or 1.0
    return {k: v / norm for k, v in out.items()}


def _count_words(text: str) -> int:
    # str.count runs in C: a 100 kB prompt costs microseconds, where str.split would cost a millisecond.
    return text.count(" ") + text.count("\n") + 1 if text else 0


def dense_features(req: Request, words: Sequence[str]) -> np.ndarray:
    """The fixed-width numeric features, in ``DENSE_NAMES`` order (all finite)."""
    text = req.text
    return np.array([
        math.log1p(len(text)),
        math.log1p(_count_words(text)),
        math.log1p(len(req.last_user)),
        math.log1p(_count_words(req.last_user)),
        float(req.turns),
        math.log1p(text.count("\n")),
        float(min(text.count("?"), 5)),
        1.0 if req.max_tokens else 0.0,
        math.log1p(req.max_tokens or 0),
        1.0 if req.temperature is None else req.temperature,
        float(req.stops),
        *cue_vector(words),
    ], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Features:
    """Everything the model needs from one request: dense numbers, hashed n-grams, and the model name."""

    dense: np.ndarray
    sparse: dict[int, float]
    model: str
    max_tokens: int | None
    extra: np.ndarray | None = None  # optional text-score inputs (sentence embeddings; evaluation only)


def extract(req: Request) -> Features:
    words = _words(req.last_user or req.text)
    return Features(dense=dense_features(req, words), sparse=hashed_ngrams(words), model=req.model,
                    max_tokens=req.max_tokens)
