"""Hostile clients against an in-process gateway: sizes, slowloris, slow bodies, rates, headers, upstream URL."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from gateway.hardening import ConnectionRates, IdleWatch, RedactSecrets, sanitised_headers
from gateway.reliability import ReliabilityConfig
from tests.gateway.fakes import cluster

CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


def reliability(**hardening) -> ReliabilityConfig:
    cfg = ReliabilityConfig()
    for k, v in hardening.items():
        setattr(cfg.hardening, k, v)
    return cfg


async def raw(url: str, data: bytes, *, pause: float = 0.0, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes (optionally one at a time with ``pause``) and return what the server answered."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        if pause:
            for i in range(len(data)):
                writer.write(data[i:i + 1])
                await writer.drain()
                await asyncio.sleep(pause)
        else:
            writer.write(data)
            await writer.drain()
        return await asyncio.wait_for(reader.read(65536), read_timeout)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        writer.close()


async def test_oversized_header_and_too_many_headers_get_4xx() -> None:
    async with cluster(1, reliability=reliability(max_header_bytes=1024, max_headers=20)) as (url, backends, _):
        async with aiohttp.ClientSession() as s:
            r = await s.post(url + "/v1/chat/completions", json=CHAT, headers={"X-Big": "a" * 4096})
            assert 400 <= r.status < 500
            r = await s.post(url + "/v1/chat/completions", json=CHAT,
                             headers={f"X-H{i}": "v" for i in range(40)})
            assert 400 <= r.status < 500
            r = await s.post(url + "/v1/chat/completions", json=CHAT)
            assert r.status == 200
        assert backends[0].seen == 1


async def test_slowloris_head_is_cut_off() -> None:
    async with cluster(1, reliability=reliability(header_timeout=0.5)) as (url, backends, _):
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" * 1
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        answer = await raw(url, head + b"X-Slow: " + b"a" * 200, pause=0.01, read_timeout=10)
        # The connection is closed long before the 200 slow bytes (2 s) could complete a request.
        assert answer == b"" and loop.time() - t0 < 5
        assert backends[0].seen == 0


async def test_slow_body_gets_408() -> None:
    async with cluster(1, reliability=reliability(body_timeout=0.3)) as (url, backends, _):
        body = orjson.dumps(CHAT)
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(head + body[:5])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408") and b'"code":"body_timeout"' in answer
        assert backends[0].seen == 0


async def test_connection_rate_limit_gives_429_with_retry_after() -> None:
    async with cluster(1, reliability=reliability(conn_rate=1.0, conn_burst=3.0)) as (url, _, _app):
        conn = aiohttp.TCPConnector(limit=1)  # one keep-alive connection for every request
        async with aiohttp.ClientSession(connector=conn) as s:
            statuses = []
            for _ in range(6):
                r = await s.get(url + "/v1/models")
                statuses.append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
                    assert (await r.json())["error"]["code"] == "connection_rate_exceeded"
                await r.read()
        assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
        async with aiohttp.ClientSession() as s2:  # another connection has its own budget
            assert (await s2.get(url + "/v1/models")).status == 200


async def test_connection_named_and_hop_by_hop_headers_never_reach_upstream() -> None:
    async with cluster(1) as (url, backends, _):
        async with aiohttp.ClientSession() as s:
            r = await s.post(url + "/v1/chat/completions", json=CHAT, headers={
                "Connection": "keep-alive, X-Session-Id", "X-Session-Id": "s1", "Proxy-Authorization": "x",
                "Upgrade": "h2c", "TE": "trailers", "Authorization": "Bearer sk-client-secret"})
            assert r.status == 200
        seen = {k.lower() for k in backends[0].headers_seen[-1]}
        assert not seen & {"x-session-id", "proxy-authorization", "upgrade", "te", "authorization"}


async def test_bad_request_id_rejected() -> None:
    async with cluster(1) as (url, backends, _):
        async with aiohttp.ClientSession() as s:
            r = await s.post(url + "/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "x" * 500})
            assert r.status == 400 and (await r.json())["error"]["param"] == "X-Request-Id"
        assert backends[0].seen == 0


async def test_client_cannot_choose_the_upstream() -> None:
    """Absolute-form targets, Host and forwarding headers never redirect the proxy."""
    evil = aiohttp.web.Application()
    hits = []

    async def catch(request: aiohttp.web.Request) -> aiohttp.web.Response:
        hits.append(request.path)
        return aiohttp.web.Response(text="evil")
    evil.router.add_route("*", "/{tail:.*}", catch)
    from aiohttp.test_utils import TestServer
    server = TestServer(evil, host="127.0.0.1")
    await server.start_server()
    evil_host = f"127.0.0.1:{server.port}"
    try:
        async with cluster(1) as (url, backends, _):
            body = orjson.dumps(CHAT)
            for target in (f"http://{evil_host}/v1/chat/completions", "/v1/chat/completions"):
                req = (f"POST {target} HTTP/1.1\r\nHost: {evil_host}\r\nX-Forwarded-Host: {evil_host}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                       f"Connection: close\r\n\r\n").encode() + body
                answer = await raw(url, req)
                assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            async with aiohttp.ClientSession() as s:
                r = await s.post(url + "/v1/../admin/replicas", json={"url": f"http://{evil_host}"})
                assert r.status in (403, 404)
        assert hits == [] and backends[0].seen == 2
    finally:
        await server.close()


def test_connection_rates_refill_and_prune() -> None:
    now = [0.0]
    rates = ConnectionRates(2.0, 2.0, clock=lambda: now[0])
    rates.take("a")
    rates.take("a")
    with pytest.raises(Exception) as e:
        rates.take("a")
    assert e.value.status == 429
    now[0] = 1.0
    rates.take("a")
    now[0] = 100.0
    rates.take("b")
    assert "a" not in rates.buckets


def test_sanitised_headers_drops_connection_named_fields() -> None:
    class Req:
        headers = {"Connection": "close, X-Foo", "X-Foo": "1", "X-Bar": "2", "Keep-Alive": "5"}
    assert sanitised_headers(Req()) == {"X-Bar": "2"}  # type: ignore[arg-type]

    class Plain:
        headers = {"Connection": "keep-alive", "X-Bar": "2"}
    assert sanitised_headers(Plain()) is None  # type: ignore[arg-type]


def test_idle_watch_aborts_only_stuck_transports() -> None:
    class T:
        def __init__(self, sizes: list[int]) -> None:
            self.sizes, self.aborted = sizes, False

        def get_write_buffer_size(self) -> int:
            return self.sizes.pop(0) if len(self.sizes) > 1 else self.sizes[0]

        def is_closing(self) -> bool:
            return self.aborted

        def abort(self) -> None:
            self.aborted = True

    w = IdleWatch(timeout=5.0)
    stuck, reading = T([100, 100, 100]), T([100, 50, 10, 0])
    w.watched = {stuck: [0.0, 0.0], reading: [0.0, 0.0]}
    assert w.check(1.0) == 0
    assert w.check(3.0) == 0
    assert w.check(7.0) == 1 and stuck.aborted and not reading.aborted


def test_secrets_are_redacted_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    f = RedactSecrets()
    log = logging.getLogger("test.redact")
    secrets = ["Bearer sk-abcdef123456", "redis://:hunter2@redis:6379/0", "api_key=topsecret", "admin token: t0k3n"]
    for s in secrets:
        record = log.makeRecord(log.name, logging.INFO, __file__, 1, "auth with %s", (s,), None)
        f.filter(record)
        msg = record.getMessage()
        for leaked in ("sk-abcdef123456", "hunter2", "topsecret", "t0k3n"):
            assert leaked not in msg, msg
        assert "***" in msg


async def test_running_gateway_redacts_what_reaches_the_log_handlers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with cluster(1):
        logging.getLogger("gateway.test").warning("upstream said: Authorization: Bearer sk-live-0123456789 at "
                                                  "redis://user:pw123@host/0")
    assert "sk-live-0123456789" not in caplog.text and "pw123" not in caplog.text
    assert "Bearer ***" in caplog.text
