"""A table of bad inputs: each gets the right 4xx with an OpenAI error body, none a 5xx (DESIGN.md section 6)."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from tests.gateway.fakes import cluster

KEY = "sk-test-key"
ADMIN = "admin-secret"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSG = [{"role": "user", "content": "hi"}]


def j(obj) -> bytes:
    return orjson.dumps(obj)


# (name, method, path, body bytes, headers, expected status, expected param or None)
CASES = [
    ("bad json", "POST", CHAT, b'{"model": "mock",', AUTH, 400, None),
    ("empty body", "POST", CHAT, b"", AUTH, 400, None),
    ("json array", "POST", CHAT, b"[1, 2]", AUTH, 400, None),
    ("json string", "POST", CHAT, b'"hello"', AUTH, 400, None),
    ("invalid utf-8", "POST", CHAT, b'{"model": "mock", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
     AUTH, 400, None),
    ("missing model", "POST", CHAT, j({"messages": MSG}), AUTH, 400, "model"),
    ("model not a string", "POST", CHAT, j({"model": 5, "messages": MSG}), AUTH, 400, "model"),
    ("empty model", "POST", CHAT, j({"model": " ", "messages": MSG}), AUTH, 400, "model"),
    ("unknown model", "POST", CHAT, j({"model": "gpt-9", "messages": MSG}), AUTH, 404, "model"),
    ("missing messages", "POST", CHAT, j({"model": "mock"}), AUTH, 400, "messages"),
    ("messages not a list", "POST", CHAT, j({"model": "mock", "messages": "hi"}), AUTH, 400, "messages"),
    ("empty messages", "POST", CHAT, j({"model": "mock", "messages": []}), AUTH, 400, "messages"),
    ("message not an object", "POST", CHAT, j({"model": "mock", "messages": ["hi"]}), AUTH, 400, "messages[0]"),
    ("bad role", "POST", CHAT, j({"model": "mock", "messages": [{"role": "robot", "content": "x"}]}), AUTH, 400,
     "messages[0].role"),
    ("missing content", "POST", CHAT, j({"model": "mock", "messages": [{"role": "user"}]}), AUTH, 400,
     "messages[0].content"),
    ("content wrong type", "POST", CHAT, j({"model": "mock", "messages": [{"role": "user", "content": 42}]}), AUTH,
     400, "messages[0].content"),
    ("content part without type", "POST", CHAT,
     j({"model": "mock", "messages": [{"role": "user", "content": [{"text": "x"}]}]}), AUTH, 400,
     "messages[0].content[0]"),
    ("negative max_tokens", "POST", CHAT, j({"model": "mock", "messages": MSG, "max_tokens": -1}), AUTH, 400,
     "max_tokens"),
    ("zero max_tokens", "POST", CHAT, j({"model": "mock", "messages": MSG, "max_tokens": 0}), AUTH, 400,
     "max_tokens"),
    ("huge max_tokens", "POST", CHAT, j({"model": "mock", "messages": MSG, "max_tokens": 10**12}), AUTH, 400,
     "max_tokens"),
    ("string max_tokens", "POST", CHAT, j({"model": "mock", "messages": MSG, "max_tokens": "10"}), AUTH, 400,
     "max_tokens"),
    ("float max_completion_tokens", "POST", CHAT,
     j({"model": "mock", "messages": MSG, "max_completion_tokens": 1.5}), AUTH, 400, "max_completion_tokens"),
    ("bool max_tokens", "POST", CHAT, j({"model": "mock", "messages": MSG, "max_tokens": True}), AUTH, 400,
     "max_tokens"),
    ("stream not bool", "POST", CHAT, j({"model": "mock", "messages": MSG, "stream": "yes"}), AUTH, 400, "stream"),
    ("temperature too high", "POST", CHAT, j({"model": "mock", "messages": MSG, "temperature": 5}), AUTH, 400,
     "temperature"),
    ("temperature string", "POST", CHAT, j({"model": "mock", "messages": MSG, "temperature": "hot"}), AUTH, 400,
     "temperature"),
    ("top_p negative", "POST", CHAT, j({"model": "mock", "messages": MSG, "top_p": -0.1}), AUTH, 400, "top_p"),
    ("n zero", "POST", CHAT, j({"model": "mock", "messages": MSG, "n": 0}), AUTH, 400, "n"),
    ("stop not strings", "POST", CHAT, j({"model": "mock", "messages": MSG, "stop": [1, 2]}), AUTH, 400, "stop"),
    ("stream_options not object", "POST", CHAT,
     j({"model": "mock", "messages": MSG, "stream": True, "stream_options": True}), AUTH, 400, "stream_options"),
    ("completion missing prompt", "POST", COMP, j({"model": "mock"}), AUTH, 400, "prompt"),
    ("completion empty prompt list", "POST", COMP, j({"model": "mock", "prompt": []}), AUTH, 400, "prompt"),
    ("completion prompt of mixed types", "POST", COMP, j({"model": "mock", "prompt": ["a", 1]}), AUTH, 400,
     "prompt"),
    ("completion negative token ids", "POST", COMP, j({"model": "mock", "prompt": [1, -2]}), AUTH, 400, "prompt"),
    ("oversized body", "POST", CHAT, j({"model": "mock", "messages": [{"role": "user", "content": "x" * 70_000}]}),
     AUTH, 413, None),
    ("no api key", "POST", CHAT, j({"model": "mock", "messages": MSG}), {"Content-Type": "application/json"}, 401,
     None),
    ("wrong api key", "POST", CHAT, j({"model": "mock", "messages": MSG}), {"Authorization": "Bearer sk-wrong"}, 401,
     None),
    ("malformed auth header", "POST", CHAT, j({"model": "mock", "messages": MSG}), {"Authorization": KEY}, 401,
     None),
    ("models without key", "GET", "/v1/models", b"", {}, 401, None),
    ("admin without token", "GET", "/admin/replicas", b"", {}, 401, None),
    ("admin with api key", "GET", "/admin/replicas", b"", AUTH, 403, None),
    ("admin unknown route without token", "GET", "/admin/secrets", b"", {}, 401, None),
    ("admin add without url", "POST", "/admin/replicas", j({"id": "x"}), {"Authorization": f"Bearer {ADMIN}"}, 400,
     "url"),
    ("admin add bad url", "POST", "/admin/replicas", j({"url": "file:///etc/passwd"}),
     {"Authorization": f"Bearer {ADMIN}"}, 400, "url"),
    ("admin drain unknown replica", "POST", "/admin/replicas/nope/drain", b"", {"Authorization": f"Bearer {ADMIN}"},
     404, "id"),
    ("unknown route", "GET", "/v2/everything", b"", AUTH, 404, None),
    ("wrong method", "GET", CHAT, b"", AUTH, 405, None),
]


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"{KEY} name=tester\n")
    return str(path)


async def test_bad_input_table(keys_file: str) -> None:
    assert len(CASES) >= 30
    failures = []
    async with cluster(2, api_keys=keys_file, admin_token=ADMIN, max_body_bytes=64 * 1024,
                       max_tokens_limit=100_000) as (url, backends, _app):
        async with aiohttp.ClientSession() as s:
            for name, method, path, body, headers, status, param in CASES:
                async with s.request(method, url + path, data=body or None, headers=headers) as r:
                    raw = await r.read()
                try:
                    err = orjson.loads(raw)["error"]
                    ok = (r.status == status and set(err) >= {"message", "type", "param", "code"}
                          and (param is None or err["param"] == param))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    ok = False
                if not ok or r.status >= 500:
                    failures.append(f"{name}: {r.status} {raw[:200]!r}")
            # The same gateway still answers a good request afterwards.
            good = await s.post(url + CHAT, json={"model": "mock", "messages": MSG}, headers=AUTH)
            assert good.status == 200
        assert sum(b.seen for b in backends) == 1  # no bad request reached a replica
    assert not failures, "\n".join(failures)
