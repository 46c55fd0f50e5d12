"""OpenAI-style errors (DESIGN.md section 6), shared by the gateway and the replicas.

Body: ``{"error": {"message", "type", "param", "code"}}``. Status codes: 400 bad input, 401/403 auth,
404 unknown model or route, 413 body too large, 429 rate limited, 503 no capacity (both with Retry-After),
502/504 upstream failure after retries.
"""

from __future__ import annotations

from typing import Any

import orjson

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """An error that becomes an OpenAI-style HTTP response; raise it anywhere on the request path."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_json(err: APIError) -> bytes:
    return orjson.dumps(err.body())


def sse_error_event(err: APIError) -> bytes:
    """The SSE event that ends a stream failing after its first byte, followed by `[DONE]`."""
    return b"data: " + error_json(err) + b"\n\ndata: [DONE]\n\n"


def http_response(err: APIError):  # -> aiohttp.web.Response, imported lazily to keep this module light
    from aiohttp import web

    return web.Response(
        status=err.status,
        body=error_json(err),
        content_type="application/json",
        headers=err.headers(),
    )
