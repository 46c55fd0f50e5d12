"""The replica server in-process (aiohttp test server, real HTTP): OpenAI shapes, errors, state endpoints, Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from replicas.config import ReplicaConfig
from replicas.engine.engine import Engine
from replicas.engine.kv_events import KVEventPublisher, stream_key
from replicas.engine.tokenizer import load_tokenizer
from replicas.load_report import LoadPublisher
from replicas.runners.cost_model import profile
from replicas.runners.sim import SimRunner
from replicas.server import ReplicaServer

LOAD_FIELDS = {"replica_id", "url", "model", "block_size", "num_waiting", "num_running", "waiting_prompt_tokens",
               "running_tokens", "kv_blocks_total", "kv_blocks_used", "kv_blocks_cached", "prefill_tokens_per_s",
               "decode_step_ms", "ts"}


@pytest.fixture
async def make_client(tiny_model_dir: Path) -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient] = []
    tok = load_tokenizer(tiny_model_dir)

    async def make(redis_url: str | None = None, **kw: Any) -> tuple[TestClient, Engine]:
        cfg = ReplicaConfig(model=str(tiny_model_dir), served_model_name="tiny-test", redis_url=redis_url,
                            kv_blocks=kw.pop("kv_blocks", 512), **kw)
        runner = SimRunner(profile("h200-llama8b"), tok, kv_blocks=cfg.kv_blocks, output_mean=10)
        engine = Engine(cfg, runner, tok, publisher=KVEventPublisher(cfg.replica_id, redis_url, cfg.key_prefix))
        loads = LoadPublisher(redis_url, cfg.key_prefix, cfg.replica_id, cfg.public_url, [cfg.model_name],
                              engine.load_report, 0.05, 2.0) if redis_url else None
        client = TestClient(TestServer(ReplicaServer(engine, tok, loads).app))
        await client.start_server()
        clients.append(client)
        return client, engine

    yield make
    for c in clients:
        await c.close()


def chat(content: str = "Hello!", **kw: Any) -> dict[str, Any]:
    return {"model": "tiny-test", "messages": [{"role": "user", "content": content}], **kw}


async def test_chat_and_completion_shapes(make_client: Callable[..., Any]) -> None:
    client, _ = await make_client()
    r = await client.post("/v1/chat/completions", json=chat(max_tokens=4, ignore_eos=True))
    body = await r.json()
    assert r.status == 200 and r.headers["X-Foresight-Replica"] == "r0"
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 4 and body["choices"][0]["finish_reason"] == "length"
    r = await client.post("/v1/completions", json={"model": "tiny-test", "prompt": [5, 6, 7], "max_tokens": 3,
                                                     "ignore_eos": True})
    body = await r.json()
    assert body["object"] == "text_completion" and body["usage"] == {
        "prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6, "prompt_tokens_details": {"cached_tokens": 0}}
    models = await (await client.get("/v1/models")).json()
    assert models["data"][0]["id"] == "tiny-test"


async def test_stream_with_usage_and_forced_length(make_client: Callable[..., Any]) -> None:
    client, _ = await make_client()
    r = await client.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}),
                          headers={"X-Sim-Output-Tokens": "9"})
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in (await r.text()).split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 9
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/v1/chat/completions", b"{not json", 400, None),
    ("/v1/chat/completions", b"[1, 2]", 400, None),
    ("/v1/chat/completions", orjson.dumps(chat(model="gpt-9")), 404, "model"),
    ("/v1/chat/completions", orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), 400, "model"),
    ("/v1/chat/completions", orjson.dumps(chat(messages=[])), 400, "messages"),
    ("/v1/chat/completions", orjson.dumps(chat(max_tokens=0)), 400, "max_tokens"),
    ("/v1/chat/completions", orjson.dumps(chat(temperature=9)), 400, "temperature"),
    ("/v1/chat/completions", orjson.dumps(chat(n=2)), 400, "n"),
    ("/v1/chat/completions", orjson.dumps(chat(stop=[1])), 400, "stop"),
    ("/v1/chat/completions", orjson.dumps(chat("word " * 400)), 400, "prompt"),
    ("/v1/completions", orjson.dumps({"model": "tiny-test", "prompt": ["a", "b"]}), 400, "prompt"),
    ("/v1/completions", orjson.dumps({"model": "tiny-test", "prompt": [1, -4]}), 400, "prompt"),
])
async def test_bad_inputs_get_openai_errors(make_client: Callable[..., Any], path: str, body: bytes, status: int,
                                            param: str | None) -> None:
    client, engine = await make_client(max_model_len=256)
    r = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    err = (await r.json())["error"]
    assert r.status == status and err["param"] == param and err["message"] and err["type"]
    assert engine.pool.num_used == 0


async def test_oversized_body_is_413_and_bad_header_400(make_client: Callable[..., Any]) -> None:
    client, _ = await make_client(max_body_bytes=1000)
    r = await client.post("/v1/completions", data=b"x" * 5000)
    assert r.status == 413 and (await r.json())["error"]["type"] == "invalid_request_error"
    client, _ = await make_client()
    r = await client.post("/v1/chat/completions", json=chat(), headers={"X-Sim-Output-Tokens": "many"})
    assert r.status == 400
    assert (await client.get("/nowhere")).status == 404


async def test_full_queue_answers_503_with_retry_after(make_client: Callable[..., Any]) -> None:
    client, engine = await make_client(max_num_seqs=1, max_waiting=1)
    long = {"X-Sim-Output-Tokens": "400"}
    first = asyncio.create_task(client.post("/v1/chat/completions", json=chat(), headers=long))
    while not engine.scheduler.running:
        await asyncio.sleep(0.005)
    second = asyncio.create_task(client.post("/v1/chat/completions", json=chat(), headers=long))
    while not engine.scheduler.waiting:
        await asyncio.sleep(0.005)
    r = await client.post("/v1/chat/completions", json=chat())
    assert r.status == 503 and r.headers["Retry-After"] == "1"
    assert (await r.json())["error"]["type"] == "service_unavailable"
    for t in (first, second):
        t.cancel()


async def test_disconnect_frees_blocks_and_state_endpoints(make_client: Callable[..., Any]) -> None:
    client, engine = await make_client()
    r = await client.post("/v1/chat/completions", json=chat("a long question " * 20, stream=True),
                          headers={"X-Sim-Output-Tokens": "5000"})
    data_lines = 0
    while data_lines < 3:  # the role chunk, then two content chunks: the prompt is computed
        data_lines += (await r.content.readline()).startswith(b"data: ")
    load = await (await client.get("/load")).json()
    assert LOAD_FIELDS <= set(load) and load["num_running"] == 1 and load["kv_blocks_used"] > 0
    r.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while engine.pool.num_used and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    load = await (await client.get("/load")).json()
    assert load["kv_blocks_used"] == 0 and load["num_running"] == 0 and load["kv_blocks_cached"] > 0
    snap = await (await client.get("/kv/blocks")).json()
    assert sorted(snap["block_hashes"]) == sorted(engine.pool.cached_block_hashes())
    assert snap["block_size"] == 16 and snap["seq"] >= 2 and snap["epoch"] == load["kv_events_epoch"]
    metrics = await (await client.get("/metrics")).text()
    for name in ("foresight_replica_prompt_tokens_total", "foresight_replica_prefix_hit_tokens_total",
                 "foresight_replica_step_duration_seconds_bucket", 'foresight_replica_requests_total{finish_reason="abort"}',
                 "foresight_replica_num_requests_waiting", 'foresight_replica_kv_blocks{state="cached"}'):
        assert name in metrics


async def test_events_and_load_reports_reach_redis(make_client: Callable[..., Any], redis_url: str) -> None:
    import redis.asyncio as aioredis

    client, engine = await make_client(redis_url=redis_url, replica_id="rq")
    r = await client.post("/v1/chat/completions", json=chat("cache me " * 30, max_tokens=2))
    assert r.status == 200
    rd = aioredis.Redis.from_url(redis_url)
    key = stream_key("foresight:", "rq")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entries = await rd.xrange(key)
        if len(entries) >= engine.publisher.seq and await rd.get("foresight:load:rq"):
            break
        await asyncio.sleep(0.05)
    batches = [orjson.loads(fields[b"data"]) for _, fields in entries]
    assert [b["seq"] for b in batches] == list(range(1, len(batches) + 1))  # gap-free numbering
    assert batches[0]["events"] == [{"type": "AllBlocksCleared"}]
    stored = {h for b in batches for e in b["events"] if e["type"] == "BlockStored" for h in e["block_hashes"]}
    assert stored == set(engine.pool.cached_block_hashes()) and stored
    load = orjson.loads(await rd.get("foresight:load:rq"))
    assert LOAD_FIELDS <= set(load) and load["replica_id"] == "rq"
    assert 0 < await rd.pttl("foresight:load:rq") <= 2000
    assert await rd.zscore("foresight:loads", "rq") and await rd.get("foresight:replica:rq")
    await rd.aclose()


async def test_runner_failure_mid_stream_ends_with_an_sse_error(make_client: Callable[..., Any]) -> None:
    client, engine = await make_client()
    original = engine.runner.execute
    calls = 0

    async def flaky(batch: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("simulated device fault")
        return await original(batch)

    engine.runner.execute = flaky  # type: ignore[method-assign]
    r = await client.post("/v1/chat/completions", json=chat(stream=True), headers={"X-Sim-Output-Tokens": "50"})
    events = [line[6:] for line in (await r.text()).split("\n") if line.startswith("data: ")]
    assert r.status == 200 and events[-1] == "[DONE]"
    err = orjson.loads(events[-2])["error"]
    assert err["type"] == "server_error" and "device fault" in err["message"]
    assert engine.pool.num_used == 0
    r = await client.post("/v1/chat/completions", json=chat(max_tokens=2))  # the engine goes on
    assert r.status == 200


async def test_non_stream_client_timeout_aborts_the_request(make_client: Callable[..., Any]) -> None:
    import aiohttp

    client, engine = await make_client()
    with pytest.raises(asyncio.TimeoutError):
        await client.post("/v1/chat/completions", json=chat(), headers={"X-Sim-Output-Tokens": "100000"},
                          timeout=aiohttp.ClientTimeout(total=0.3))
    deadline = time.monotonic() + 10
    while (engine.scheduler.running or engine.pool.num_used) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not engine.scheduler.running and engine.pool.num_used == 0


async def test_priority_from_body_or_gateway_header_orders_the_queue(make_client: Callable[..., Any]) -> None:
    client, engine = await make_client(max_num_seqs=1)
    long = {"X-Sim-Output-Tokens": "400"}
    first = asyncio.create_task(client.post("/v1/chat/completions", json=chat(), headers=long))
    while not engine.scheduler.running:
        await asyncio.sleep(0.005)
    queued = [asyncio.create_task(client.post("/v1/chat/completions", json=chat(**body), headers=headers))
              for body, headers in [({}, {**long, "X-Foresight-Priority": "900"}),
                                    ({"priority": -50}, {**long, "X-Foresight-Priority": "5"}),  # header wins
                                    ({"priority": -3}, long)]]  # no gateway header: the body's own
    while len(engine.scheduler.waiting) < 3:
        await asyncio.sleep(0.005)
    assert sorted(r.priority for r in engine.scheduler.waiting) == [-3, 5, 900]
    assert engine.scheduler._next_waiting(time.monotonic()) == 2  # the -3 one is next
    for t in (first, *queued):
        t.cancel()


@pytest.mark.parametrize(("body", "headers"), [({"priority": "high"}, {}), ({"priority": 1.5}, {}),
                                               ({"priority": 2**60}, {}), ({}, {"X-Foresight-Priority": "soon"}),
                                               ({}, {"X-Foresight-Priority": str(2**60)})])
async def test_bad_priority_is_400(make_client: Callable[..., Any], body: dict[str, Any],
                                   headers: dict[str, str]) -> None:
    client, engine = await make_client()
    r = await client.post("/v1/chat/completions", json=chat(**body), headers=headers)
    assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"
    assert not engine.scheduler.waiting and not engine.scheduler.running
