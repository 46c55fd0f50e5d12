"""Mid-stream continuation in-process: a backend that dies after two chunks, and healthy or dying others."""

from __future__ import annotations

import aiohttp
import orjson

from gateway.app import GATEWAY
from gateway.reliability import ReliabilityConfig
from tests.gateway.fakes import cluster

CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}}


def events(text: str) -> list:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[6:]
            out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


async def stream(url: str, body: dict) -> tuple[str, list]:
    async with aiohttp.ClientSession() as s:
        r = await s.post(url + "/v1/chat/completions", json=body)
        assert r.status == 200
        return r.headers["X-Foresight-Replica"], events((await r.read()).decode())


async def test_broken_stream_continues_on_a_healthy_replica() -> None:
    async with cluster(2) as (url, backends, app):
        backends[0].fault = "midstream"
        broken = backends[0].url.split("//")[1]
        for _ in range(4):
            rid, evs = await stream(url, CHAT)
            if rid == broken:
                break
        assert rid == broken
        assert evs[-1] == "[DONE]" and not any("error" in e for e in evs if isinstance(e, dict))
        chunks = [e for e in evs if isinstance(e, dict)]
        assert {c["id"] for c in chunks} == {"chatcmpl-mock"}
        text = "".join((c["choices"][0].get("delta") or {}).get("content") or "" for c in chunks if c["choices"])
        assert text.startswith("partial ") and "tok3" in text
        assert sum(1 for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]) == 1
        # The continuation asked the other backend to go on with the partial answer.
        sent = [orjson.loads(b) for b in backends[1].bodies if b]
        cont = [b for b in sent if b.get("continue_final_message")]
        assert cont and cont[-1]["messages"][-1] == {"role": "assistant", "content": "partial "}
        assert chunks[-1]["usage"]["completion_tokens"] >= 8
        gw = app[GATEWAY]
        assert all(r.local.requests == 0 for r in gw.registry)


async def test_stream_ends_with_error_event_when_every_continuation_fails() -> None:
    async with cluster(2) as (url, backends, app):
        for b in backends:
            b.fault = "midstream"
        _, evs = await stream(url, CHAT)
        assert evs[-1] == "[DONE]" and "error" in evs[-2]
        assert evs[-2]["error"]["code"] == "upstream_stream_error"
        assert all(r.local.requests == 0 for r in app[GATEWAY].registry)


async def test_continuation_can_be_turned_off() -> None:
    cfg = ReliabilityConfig(max_continuations=0)
    async with cluster(2, reliability=cfg) as (url, backends, _):
        backends[0].fault = backends[1].fault = "midstream"
        _, evs = await stream(url, CHAT)
        assert "error" in evs[-2] and sum(b.seen for b in backends) == 1
