"""Request validation: the body must be an OpenAI request the replicas can serve, else a 400 naming the field.

Only what routing reads and what would make an upstream fail is checked (the body is forwarded untouched):
JSON object, ``model``, ``messages``/``prompt``, ``stream``, token limits and the common sampling fields' types and
ranges. Unknown fields pass through (replicas and newer clients may use them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from foresight.errors import APIError

ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
_NUM_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        # orjson rejects invalid UTF-8 too; say which it was.
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise bad("request body is not valid UTF-8", code="invalid_encoding") from None
        raise bad(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad("request body must be a JSON object", code="invalid_json")
    return body


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_common(body: Mapping[str, Any], max_tokens_limit: int) -> None:
    model = body.get("model")
    if model is None:
        raise bad("you must provide a model parameter", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise bad("'model' must be a non-empty string", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("'stream' must be a boolean", "stream")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    for field in ("max_tokens", "max_completion_tokens"):
        v = body.get(field)
        if v is None:
            continue
        if not _is_int(v):
            raise bad(f"'{field}' must be an integer", field)
        if v < 1:
            raise bad(f"'{field}' must be at least 1, got {v}", field)
        if v > max_tokens_limit:
            raise bad(f"'{field}' is {v}, above this gateway's limit of {max_tokens_limit}", field)
    for field, (lo, hi) in _NUM_RANGES.items():
        v = body.get(field)
        if v is None:
            continue
        if not _is_num(v):
            raise bad(f"'{field}' must be a number", field)
        if not lo <= v <= hi:
            raise bad(f"'{field}' must be between {lo:g} and {hi:g}, got {v}", field)
    n = body.get("n")
    if n is not None and (not _is_int(n) or not 1 <= n <= 128):
        raise bad("'n' must be an integer between 1 and 128", "n")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad("'seed' must be an integer", "seed")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not isinstance(stop, list) or len(stop) > 16 or not all(isinstance(s, str) for s in stop):
            raise bad("'stop' must be a string or a list of at most 16 strings", "stop")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("'user' must be a string", "user")


def _check_content(content: Any, i: int, role: str) -> None:
    param = f"messages[{i}].content"
    if content is None:
        if role in ("assistant", "function"):
            return  # assistant turns with tool calls may have no content
        raise bad(f"{param} is required for role '{role}'", param, "missing_required_parameter")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise bad(f"{param} must be a string or a list of content parts", param)
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad(f"{param}[{j}] must be an object with a 'type'", f"{param}[{j}]")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise bad(f"{param}[{j}].text must be a string", f"{param}[{j}].text")


def validate_chat(body: dict[str, Any], max_tokens_limit: int) -> None:
    _check_common(body, max_tokens_limit)
    messages = body.get("messages")
    if messages is None:
        raise bad("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise bad("'messages' must be a list", "messages")
    if not messages:
        raise bad("'messages' must contain at least one message", "messages", "empty_array")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object", f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad(f"messages[{i}].role must be one of {sorted(ROLES)}", f"messages[{i}].role")
        _check_content(m.get("content"), i, role)


def validate_completion(body: dict[str, Any], max_tokens_limit: int) -> None:
    _check_common(body, max_tokens_limit)
    prompt = body.get("prompt")
    if prompt is None:
        raise bad("'prompt' is required", "prompt", "missing_required_parameter")
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, list) or not prompt:
        raise bad("'prompt' must be a string, a list of strings or a non-empty list of token ids", "prompt")
    if all(isinstance(p, str) for p in prompt):
        return
    if all(_is_int(t) and t >= 0 for t in prompt):
        return
    if all(isinstance(p, list) and p and all(_is_int(t) and t >= 0 for t in p) for p in prompt):
        return
    raise bad("'prompt' must be a string, a list of strings, or token ids (non-negative integers)", "prompt")


VALIDATORS = {"chat": validate_chat, "completions": validate_completion}


def validate(route: str, raw: bytes, max_tokens_limit: int) -> dict[str, Any]:
    """The parsed body of a valid request for ``route`` (``chat`` or ``completions``); APIError(400) otherwise."""
    if not raw:
        raise bad("request body is empty; send a JSON object", code="invalid_json")
    body = parse_json(raw)
    VALIDATORS[route](body, max_tokens_limit)
    return body
