from __future__ import annotations

import orjson

from foresight.errors import APIError, error_json, sse_error_event


def test_error_body_shape() -> None:
    err = APIError(429, "slow down", code="rate_limited", retry_after=2.4)
    body = orjson.loads(error_json(err))
    assert body == {"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                              "code": "rate_limited"}}
    assert err.headers() == {"Retry-After": "2"}


def test_sse_error_ends_with_done() -> None:
    out = sse_error_event(APIError(502, "replica failed"))
    assert out.startswith(b"data: {") and out.endswith(b"data: [DONE]\n\n")
