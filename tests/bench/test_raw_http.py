"""The lean keep-alive client of the TTFT probe, against a real aiohttp server (chunked SSE and plain bodies)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.raw_http import KeepAliveClient


async def _sse(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(body["n"]):
        await resp.write(f"data: {{\"i\": {i}}}\n\n".encode())
        await asyncio.sleep(0.001)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _plain(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "no"}}, status=400)


async def test_chunked_stream_and_keep_alive() -> None:
    app = web.Application()
    app.router.add_post("/sse", _sse)
    app.router.add_post("/plain", _plain)
    async with TestServer(app) as server:
        client = KeepAliveClient("127.0.0.1", server.port)
        try:
            for n in (3, 1):  # the second request reuses the connection
                t = await client.post_stream("/sse", f'{{"n": {n}}}'.encode())
                assert t.status == 200
                assert t.events == [f'{{"i": {i}}}'.encode() for i in range(n)] + [b"[DONE]"]
                assert t.first_data is not None and t.sent <= t.first_data <= t.end
            bad = await client.post_stream("/plain", b"{}")
            assert bad.status == 400 and bad.first_data is None and bad.events == []
            again = await client.post_stream("/sse", b'{"n": 2}')
            assert len(again.events) == 3
        finally:
            await client.close()
