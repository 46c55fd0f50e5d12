"""Parsing and validating OpenAI request bodies into engine inputs (every problem is a 400 ``APIError``).

Supported: ``/v1/chat/completions`` (``messages`` rendered with the model's chat template; content as a string
or a list of text parts) and ``/v1/completions`` (``prompt`` as a string, a list of token ids, or a
one-element list of either), with ``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p``,
``top_k``, ``seed``, ``stop``, ``stream``, ``stream_options.include_usage``, ``ignore_eos``, ``n`` = 1.
``max_tokens`` defaults to what is left of the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foresight.errors import APIError
from replicas.engine.request import SamplingParams

SIM_OUTPUT_HEADER = "X-Sim-Output-Tokens"
# The gateway's scheduling hint (its predicted work for the request). It wins over the body's ``priority`` (vLLM's
# field): the gateway never forwards a client's header, so a client behind it cannot jump the queue that way.
PRIORITY_HEADER = "X-Foresight-Priority"
PRIORITY_LIMIT = 2**53  # JSON-safe integers


@dataclass
class ParsedRequest:
    model: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    stream: bool
    include_usage: bool
    max_tokens_given: bool


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def _int(body: dict[str, Any], key: str, lo: int | None = None, hi: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"'{key}' must be an integer", key)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _bad(f"'{key}' must lie in [{lo}, {hi if hi is not None else 'inf'}]", key)
    return v


def _float(body: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad(f"'{key}' must be a number", key)
    if not lo <= v <= hi:
        raise _bad(f"'{key}' must lie in [{lo}, {hi}]", key)
    return float(v)


def _bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(f"'{key}' must be a boolean", key)
    return v


def parse_model(body: Any) -> str:
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a string", "model")
    return model


def _sampling(body: dict[str, Any], forced: int | None) -> tuple[SamplingParams, bool]:
    if _int(body, "n", 1) not in (None, 1):
        raise _bad("only n=1 is supported", "n")
    if body.get("logprobs") not in (None, False) or body.get("best_of") not in (None, 1):
        raise _bad("logprobs and best_of are not supported", "logprobs")
    max_tokens = _int(body, "max_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_completion_tokens", 1)
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 16:
        stops = list(stop)
    else:
        raise _bad("'stop' must be a string or a list of at most 16 strings", "stop")
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
        raise _bad("'stop_token_ids' must be a list of integers", "stop_token_ids")
    temperature = _float(body, "temperature", 0.0, 2.0)
    top_p = _float(body, "top_p", 0.0, 1.0)
    if top_p is not None and top_p <= 0.0:
        raise _bad("'top_p' must be in (0, 1]", "top_p")
    sp = SamplingParams(
        max_tokens=max_tokens or 1,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=_int(body, "top_k", -1) or 0,
        seed=_int(body, "seed"),
        stop=stops,
        stop_token_ids=list(stop_ids),
        ignore_eos=_bool(body, "ignore_eos"),
        forced_output_tokens=forced,
    )
    return sp, max_tokens is not None


def _stream_opts(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _bool(body, "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    include_usage = _bool(opts, "include_usage")
    return stream, include_usage


def _chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a 'role'", "messages")
        content = m.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _bad(f"messages[{i}].content: only text parts are supported", "messages")
                parts.append(part["text"])
            content = "".join(parts)
        elif not isinstance(content, str):
            raise _bad(f"messages[{i}].content must be a string or a list of text parts", "messages")
        out.append({**m, "content": content})
    return out


def parse_chat(body: dict[str, Any], tokenizer: Any, forced: int | None) -> ParsedRequest:
    model = parse_model(body)
    messages = _chat_messages(body)
    cont = _bool(body, "continue_final_message")  # vLLM's extension: go on with the final assistant message
    if cont and messages[-1].get("role") != "assistant":
        raise _bad("'continue_final_message' needs a final assistant message", "continue_final_message")
    try:
        ids = tokenizer.apply_chat_template(messages, **({"continue_final_message": True} if cont else {}))
    except Exception as exc:  # a template that rejects the conversation (raise_exception, bad roles)
        raise _bad(f"the chat template rejected the messages: {exc}", "messages") from exc
    sp, given = _sampling(body, forced)
    stream, usage = _stream_opts(body)
    return ParsedRequest(model, ids, sp, stream, usage, given)


def parse_completion(body: dict[str, Any], tokenizer: Any, forced: int | None) -> ParsedRequest:
    model = parse_model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise _bad("'prompt' must not be empty", "prompt")
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = list(prompt)
    else:
        raise _bad("'prompt' must be a non-empty string or list of token ids (batches are not supported)", "prompt")
    if body.get("echo"):
        raise _bad("'echo' is not supported", "echo")
    if body.get("suffix"):
        raise _bad("'suffix' is not supported", "suffix")
    sp, given = _sampling(body, forced)
    stream, usage = _stream_opts(body)
    return ParsedRequest(model, ids, sp, stream, usage, given)


def parse_priority(body: dict[str, Any], header: str | None) -> int:
    """The request's admission priority (lower first): the gateway's header, else the body's ``priority``, else 0."""
    given = _int(body, "priority", -PRIORITY_LIMIT, PRIORITY_LIMIT)  # validated even when the header wins
    if header is None:
        return given or 0
    try:
        value = int(header)
    except ValueError:
        raise _bad(f"{PRIORITY_HEADER} must be an integer") from None
    if abs(value) > PRIORITY_LIMIT:
        raise _bad(f"{PRIORITY_HEADER} must lie in [-2^53, 2^53]")
    return value


def parse_forced_tokens(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise _bad(f"{SIM_OUTPUT_HEADER} must be a positive integer") from None
    if n < 1:
        raise _bad(f"{SIM_OUTPUT_HEADER} must be a positive integer")
    return n
