"""The gateway's public API as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

It describes what the gateway really accepts (the checks of ``gateway.validate``, with this gateway's configured
``max_tokens`` and body limits) and every status it may answer with (DESIGN.md section 6), so that generic tools
(schemathesis, client generators) can exercise it. Unknown request fields are allowed, as the gateway forwards
them to the replicas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gateway.validate import ROLES

if TYPE_CHECKING:
    from gateway.app import Gateway

_ERR = {"$ref": "#/components/responses/Error"}


def _num(lo: float, hi: float) -> dict[str, Any]:
    return {"type": ["number", "null"], "minimum": lo, "maximum": hi}


def _common(max_tokens: int, models: list[str]) -> dict[str, Any]:
    tokens = {"type": ["integer", "null"], "minimum": 1, "maximum": max_tokens}
    return {
        # The models the replicas serve now (404 for others); any string while no replica has said yet.
        "model": {"type": "string", "enum": models} if models else {"type": "string", "minLength": 1},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": tokens, "max_completion_tokens": tokens,
        "temperature": _num(0, 2), "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
        "presence_penalty": _num(-2, 2), "frequency_penalty": _num(-2, 2),
        "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 128},
        "seed": {"type": ["integer", "null"]},
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 16},
                           {"type": "null"}]},
        "user": {"type": ["string", "null"]},
    }


def _responses(ok: dict[str, Any]) -> dict[str, Any]:
    return {"200": ok, **{str(s): _ERR for s in (400, 401, 403, 404, 408, 413, 429, 502, 503, 504)}}


def build_document(max_tokens: int, max_body_bytes: int, models: list[str] | None = None) -> dict[str, Any]:
    models = models or []
    part = {"type": "object", "required": ["type", "text"], "properties": {"type": {"const": "text"},
                                                                           "text": {"type": "string"}}}
    content = [{"type": "string"}, {"type": "array", "items": part}]
    # Assistant (and legacy function) turns may omit their content (tool calls); every other role needs it.
    message = {"anyOf": [
        {"type": "object", "required": ["role"], "properties": {
            "role": {"type": "string", "enum": ["assistant", "function"]},
            "content": {"anyOf": [*content, {"type": "null"}]}, "name": {"type": "string"}}},
        {"type": "object", "required": ["role", "content"], "properties": {
            "role": {"type": "string", "enum": sorted(ROLES - {"assistant", "function"})},
            "content": {"anyOf": content}, "name": {"type": "string"}}}]}
    chat = {"type": "object", "required": ["model", "messages"], "properties": {
        **_common(max_tokens, models), "messages": {"type": "array", "minItems": 1, "items": message}}}
    completion = {"type": "object", "required": ["model", "prompt"], "properties": {
        **_common(max_tokens, models), "prompt": {"anyOf": [
            {"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": {"type": "string"}},
            {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}]}}}
    generated = {"description": "The completion (JSON), or with `stream: true` server-sent events ending with "
                                "`data: [DONE]`", "content": {
        "application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}}

    def post(summary: str, schema: str) -> dict[str, Any]:
        return {"post": {"summary": summary, "security": [{}, {"apiKey": []}], "requestBody": {
            "required": True, "description": f"at most {max_body_bytes} bytes",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}},
            "responses": _responses(generated)}}

    def get(summary: str, content_type: str = "application/json", extra: tuple[int, ...] = ()) -> dict[str, Any]:
        out: dict[str, Any] = {"200": {"description": "OK", "content": {content_type: {"schema": {
            "type": "object" if content_type == "application/json" else "string"}}}}}
        out.update({str(s): _ERR for s in extra})
        return {"get": {"summary": summary, "responses": out}}

    models = get("Models served by the replicas (union)", extra=(401,))
    models["get"]["security"] = [{}, {"apiKey": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Foresight gateway", "version": "1",
                 "description": "OpenAI-compatible gateway that routes requests across model replicas."},
        "paths": {
            "/v1/chat/completions": post("Create a chat completion", "ChatCompletionRequest"),
            "/v1/completions": post("Create a text completion", "CompletionRequest"),
            "/v1/models": models,
            "/health": get("Liveness of the gateway"),
            "/ready": get("Whether some replica can take traffic", extra=(503,)),
            "/metrics": get("Prometheus metrics", "text/plain"),
            "/openapi.json": get("This document"),
        },
        "components": {
            "schemas": {
                "ChatCompletionRequest": chat,
                "CompletionRequest": completion,
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["message", "type"], "properties": {
                        "message": {"type": "string"}, "type": {"type": "string"},
                        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
            },
            "responses": {"Error": {
                "description": "OpenAI-style error; 429 and 503 carry Retry-After",
                "headers": {"Retry-After": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }


def openapi_handler(gw: Gateway):
    cache: dict[frozenset[str], bytes] = {}

    async def handler(_request: web.Request) -> web.Response:
        models = gw.registry.models()
        body = cache.get(models)
        if body is None:
            cache.clear()
            body = cache[models] = orjson.dumps(build_document(gw.cfg.max_tokens_limit, gw.cfg.max_body_bytes,
                                                               sorted(models)))
        return web.Response(body=body, content_type="application/json")

    return handler
