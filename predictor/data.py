"""Training and evaluation data: JSONL or JSONL.gz rows in the AlpacaEval or the OpenAI chat schema.

AlpacaEval rows: ``instruction``, ``output`` (response text), ``generator`` (model name).
Chat rows: ``messages`` (OpenAI chat; a trailing assistant message is taken as the response when no other response
field is given) or ``prompt``, ``model``, plus the response as text (``response``, ``output``, ``completion``) or as a
token count (``output_tokens``, ``completion_tokens``, ``output_length``, ``usage.completion_tokens``).
Optional request fields: ``max_tokens``, ``temperature``, ``stop``.

Targets are output lengths in tokens of the served model's tokenizer: text responses are tokenized with the
tokenizer given to ``load_rows``; explicit counts are taken as they are. Rows are grouped by their prompt (the
rendered conversation), so cross-validation never puts one prompt on both sides.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from predictor.features import Request, make_request

_TEXT_KEYS = ("response", "output", "completion")
_COUNT_KEYS = ("output_tokens", "completion_tokens", "output_length")


class DataError(ValueError):
    """A data file or row that cannot be read as either schema."""


@dataclass(slots=True)
class Example:
    request: Request
    group: str  # the prompt; rows sharing it must stay on one side of a split
    tokens: int | None = None  # a given count, or None until the text is tokenized
    response: str | None = None


def iter_json_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw:
        for lineno, line in enumerate(io.BufferedReader(raw), 1):  # type: ignore[arg-type]
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            yield row


def request_from_row(row: dict[str, Any]) -> Request:
    """The request part of a row of either schema (also used by ``foresight predictor predict``)."""
    model = str(row.get("model") or row.get("generator") or "")
    kwargs = {k: row.get(k) for k in ("max_tokens", "temperature", "stop")}
    messages = row.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise DataError("'messages' must be a list of chat messages")
        if messages and messages[-1].get("role") == "assistant" and not _has_response(row):
            messages = messages[:-1]  # the trailing assistant turn is the response, not the prompt
        return make_request(model=model, messages=messages, **kwargs)
    prompt = row.get("prompt", row.get("instruction"))
    if prompt is None:
        raise DataError("a row needs 'messages', 'prompt' or 'instruction'")
    return make_request(model=model, prompt=prompt, **kwargs)


def _has_response(row: dict[str, Any]) -> bool:
    usage = row.get("usage")
    return (any(isinstance(row.get(k), str) for k in _TEXT_KEYS) or any(row.get(k) is not None for k in _COUNT_KEYS)
            or (isinstance(usage, dict) and usage.get("completion_tokens") is not None))


def example_from_row(row: dict[str, Any]) -> Example:
    req = request_from_row(row)
    for key in _COUNT_KEYS:
        if row.get(key) is not None:
            return Example(req, req.text, tokens=int(row[key]))
    usage = row.get("usage")
    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
        return Example(req, req.text, tokens=int(usage["completion_tokens"]))
    for key in _TEXT_KEYS:
        if isinstance(row.get(key), str):
            return Example(req, req.text, response=row[key])
    messages = row.get("messages")
    if isinstance(messages, list) and messages and messages[-1].get("role") == "assistant":
        return Example(req, req.text, response=str(messages[-1].get("content") or ""))
    raise DataError("a training row needs a response text or an output token count")


def load_examples(path: str | Path, tokenizer: Any | None = None, limit: int | None = None) -> list[Example]:
    """Read every row; tokenize response texts with ``tokenizer`` (a ``tokenizers.Tokenizer``) in one batch."""
    examples: list[Example] = []
    for i, row in enumerate(iter_json_rows(path)):
        if limit is not None and i >= limit:
            break
        try:
            examples.append(example_from_row(row))
        except DataError as exc:
            raise DataError(f"{path}: row {i + 1}: {exc}") from exc
    pending = [e for e in examples if e.tokens is None]
    if pending:
        if tokenizer is None:
            raise DataError(f"{path}: rows carry response text but no tokenizer was given to count its tokens")
        encodings = tokenizer.encode_batch([e.response or "" for e in pending], add_special_tokens=False)
        for example, enc in zip(pending, encodings, strict=True):
            example.tokens = len(enc.ids)
    if not examples:
        raise DataError(f"{path}: no rows")
    return examples
