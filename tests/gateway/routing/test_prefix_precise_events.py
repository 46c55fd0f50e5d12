"""The precise index fed by a real replica's KV events through Redis, with snapshot resync on first sight and restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from gateway.routing.base import PolicyContext, ReplicaView, RequestView, create_policy
from gateway.state.redis import RedisStore
from tests.helpers.procs import ProcessManager, foresight_cmd, free_port

pytestmark = pytest.mark.slow

PROMPT = "".join(f"The cache keeps block number {i} of this shared prompt. " for i in range(40))


def spawn(procs: ProcessManager, tiny: Path, redis_url: str, port: int):
    return procs.spawn(foresight_cmd(
        "replica", "--runner", "sim", "--model", str(tiny), "--served-model-name", "tiny", "--port", str(port),
        "--replica-id", "r0", "--redis", redis_url, "--max-model-len", "4096"), port)


async def complete(url: str, prompt: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json={
            "model": "tiny", "prompt": prompt, "max_tokens": 2}, headers={"X-Sim-Output-Tokens": "2"}) as r:
        assert r.status == 200, await r.text()


async def until(cond, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_events_snapshot_and_restart(procs: ProcessManager, tiny_model_dir: Path, redis_url: str) -> None:
    port = free_port()
    replica = spawn(procs, tiny_model_dir, redis_url, port)
    await complete(replica.url, PROMPT)  # served before the gateway watches: only the snapshot knows it
    store = RedisStore(redis_url)
    policy = create_policy("prefix", PolicyContext("g", store=store, options={
        "prefix_mode": "precise", "tokenizer": str(tiny_model_dir)}))
    await policy.start()
    consumer = policy.matcher.precise
    view = ReplicaView("r0", replica.url, ("tiny",))

    def req(text: str) -> RequestView:
        return RequestView("q", "tiny", "completions", text, {}, None, len(text) // 4, 10, 20)

    try:
        policy.rank(req(PROMPT), [view])  # first sight: the consumer follows r0 and loads its snapshot
        await until(lambda: consumer.index.streams.get("r0") is not None
                    and consumer.index.streams["r0"].resyncs >= 1)
        d = policy.rank(req(PROMPT + " and more"), [view])
        assert d.explanation["r0"]["match"] > 0.9  # from the snapshot
        other = "".join(f"A different prompt, sentence {i}. " for i in range(40))
        assert policy.rank(req(other), [view]).explanation["r0"]["match"] == 0
        await complete(replica.url, other)  # now learned from a BlockStored event on the stream
        await until(lambda: policy.rank(req(other), [view]).explanation["r0"]["match"] > 0.9)
        assert consumer.index.streams["r0"].resyncs == 1
        # Restart: a new process (new epoch) with an empty cache; the index must notice and forget.
        replica.stop()
        replica = spawn(procs, tiny_model_dir, redis_url, port)
        await complete(replica.url, "".join(f"Third prompt {i}. " for i in range(60)))
        await until(lambda: consumer.index.streams["r0"].resyncs >= 2)
        await until(lambda: policy.rank(req(PROMPT), [view]).explanation["r0"]["match"] == 0)
        s = consumer.index.streams["r0"]
        assert s.gaps >= 1, (s.epoch, s.seq, s.gaps, s.resyncs)
    finally:
        await policy.close()
        await store.close()
