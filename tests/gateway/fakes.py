"""In-process upstreams for gateway unit tests: the benchmark's mock backend plus fault injection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.mock_backend import MockBackend
from gateway.app import build_app
from gateway.config import GatewayConfig


class FaultyBackend(MockBackend):
    """``fault``: None, "503" (answer 503), "500", "drop" (close the connection before answering),
    "midstream" (send two chunks then drop), "hang" (never answer), "slow" (a chunk every 50 ms for 2 s);
    ``seen`` counts requests received, ``cancelled`` the hung or slow ones whose client went away."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fault: str | None = None
        self.seen = 0
        self.headers_seen: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self.cancelled = 0
        self.unhang = asyncio.Event()  # set at teardown so a hung handler never outlives its test

    async def _complete(self, request: web.Request, route: str) -> web.StreamResponse:
        self.seen += 1
        self.headers_seen.append(dict(request.headers))
        self.bodies.append(await request.read())
        if self.fault == "503":
            return web.json_response({"error": {"message": "busy"}}, status=503)
        if self.fault == "500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if self.fault == "drop":
            request.transport.close()
            raise asyncio.CancelledError
        if self.fault == "hang":
            try:
                await asyncio.wait_for(self.unhang.wait(), 30)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.fault == "midstream":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(self._chunk(route, None, None))
            await resp.write(self._chunk(route, "partial ", None))
            await asyncio.sleep(0.05)
            request.transport.close()
            raise asyncio.CancelledError
        if self.fault == "slow":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                for _ in range(40):
                    await resp.write(self._chunk(route, "tick ", None))
                    await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            except ConnectionResetError:  # the gateway closed the upstream connection: a quiet end
                self.cancelled += 1
                return resp
            await resp.write(b"data: [DONE]\n\n")
            return resp
        return await super()._complete(request, route)


@asynccontextmanager
async def cluster(n: int = 3, model: str = "mock", **gw_overrides) -> AsyncIterator[tuple[str, list[FaultyBackend],
                                                                                        web.Application]]:
    """``n`` backends and a gateway (round_robin by default) in this event loop: yields (gateway URL, backends, app)."""
    backends, servers = [], []
    for i in range(n):
        b = FaultyBackend(model=model, replica_id=f"b{i}")
        s = TestServer(b.app(), host="127.0.0.1")
        await s.start_server()
        b.url = str(s.make_url("")).rstrip("/")
        backends.append(b)
        servers.append(s)
    opts = {"policy": "round_robin", "predictor": "off", "probe_interval": 0.2, "sync_interval": 0.05,
            "breaker_backoff": 0.3, **gw_overrides}
    cfg = GatewayConfig(replicas=[b.url for b in backends], **opts)
    app = build_app(cfg)
    gw_server = TestServer(app, host="127.0.0.1")
    await gw_server.start_server()  # TestServer cancels handlers on disconnect
    try:
        yield str(gw_server.make_url("")).rstrip("/"), backends, app
    finally:
        for b in backends:
            b.unhang.set()
        await gw_server.close()
        for s in servers:
            await s.close()
