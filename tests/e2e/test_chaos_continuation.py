"""Mid-stream continuation with real processes: the official openai SDK streams through the gateway while the
replica serving the stream is SIGKILLed; the client must see one uninterrupted stream with correct usage."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import openai
import pytest

from tests.helpers.procs import ProcessManager, ProjectProcess, foresight_cmd, free_port

MODEL = "foresight-tiny"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[ProjectProcess, dict[str, ProjectProcess]]]:
    manager = ProcessManager()
    try:
        replicas = {}
        for i in range(3):
            port = free_port()
            replicas[f"127.0.0.1:{port}"] = manager.spawn(foresight_cmd(
                "replica", "--runner", "sim", "--model", "tiny", "--port", str(port), "--replica-id", f"r{i}"),
                port, wait=False)
        for r in replicas.values():
            r.wait_healthy()
        port = free_port()
        urls = [a for r in replicas.values() for a in ("--replica", r.url)]
        gw = manager.spawn(foresight_cmd("gateway", "--port", str(port), "--predictor", "off", "--policy",
                                         "round_robin", *urls), port)
        yield gw, replicas
    finally:
        manager.cleanup()


def client(gw: ProjectProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def kill_serving(raw, replicas: dict[str, ProjectProcess]) -> ProjectProcess:
    victim = replicas.pop(raw.headers["x-foresight-replica"])
    return victim


def test_chat_stream_continues_after_sigkill(cluster) -> None:
    gw, replicas = cluster
    messages = [{"role": "user", "content": "Tell me about gateways and caches."}]
    reference = client(gw).chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    raw = client(gw).chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}, max_tokens=400,
        extra_headers={"X-Sim-Output-Tokens": "250"})
    victim = kill_serving(raw, replicas)
    chunks, text_before = [], ""
    for chunk in raw.parse():
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content and victim.alive():
            text_before += chunk.choices[0].delta.content
            if len(text_before) > 60:
                victim.signal(signal.SIGKILL)
                victim.proc.wait(10)
    assert not victim.alive()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(text_before) and len(text) > len(text_before)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert {c.model for c in chunks} == {MODEL}
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1  # one assistant-role chunk
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] is not None
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 250
    assert usage.prompt_tokens == reference.usage.prompt_tokens
    assert usage.total_tokens == usage.prompt_tokens + 250


def test_completion_stream_continues_after_sigkill(cluster) -> None:
    gw, replicas = cluster
    prompt = "The gateway routes each request"
    reference = client(gw).completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    raw = client(gw).completions.with_raw_response.create(
        model=MODEL, prompt=prompt, stream=True, stream_options={"include_usage": True}, max_tokens=120,
        # Forced length: without it the sim replica may reach EOS before the kill point and nothing is tested.
        extra_headers={"X-Sim-Output-Tokens": "100"})
    victim = kill_serving(raw, replicas)
    chunks, n = [], 0
    for chunk in raw.parse():
        chunks.append(chunk)
        n += bool(chunk.choices and chunk.choices[0].text)
        if n == 20 and victim.alive():
            victim.signal(signal.SIGKILL)
            victim.proc.wait(10)
    assert not victim.alive()
    assert len({c.id for c in chunks}) == 1
    usage = chunks[-1].usage
    # max_tokens caps the total across replicas (the sim replica stops at EOS or there).
    assert usage is not None and usage.prompt_tokens == reference.usage.prompt_tokens
    # The stream went on past the kill point (20 text chunks), and usage covers every chunk the client saw
    # (a chunk carries at least one token; the total is still capped by max_tokens across replicas).
    assert n > 20
    assert n <= usage.completion_tokens <= 120
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
