"""A simulated replica as a real process, driven by the official `openai` SDK over real HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from replicas.runners.cost_model import profile
from tests.helpers.procs import ProcessManager, ProjectProcess, foresight_cmd, free_port

PROFILE = "h100-qwen32b"  # slow enough simulated prefill that HTTP noise is small next to it
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replica(tiny_model_dir: Path) -> Iterator[ProjectProcess]:
    manager = ProcessManager()
    port = free_port()
    try:
        yield manager.spawn(foresight_cmd(
            "replica", "--runner", "sim", "--model", str(tiny_model_dir), "--served-model-name", "tiny",
            "--sim-profile", PROFILE, "--port", str(port), "--replica-id", "e2e", "--max-model-len", "6000"), port)
    finally:
        manager.cleanup()


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def client(replica: ProjectProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=replica.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_sdk_streams_a_chat_completion(replica: ProjectProcess) -> None:
    stream = client(replica).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Say something."}], max_tokens=12, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    done = client(replica).completions.create(model="tiny", prompt="Hello", max_tokens=3,
                                              extra_headers={"X-Sim-Output-Tokens": "2"})
    assert done.usage.completion_tokens == 2 and done.choices[0].finish_reason == "stop"


def ttft(replica: ProjectProcess, content: str) -> tuple[float, int, int]:
    """Seconds to the first generated text, prompt tokens, cached prompt tokens."""
    t0 = time.perf_counter()
    first = None
    usage = None
    for c in client(replica).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": content}], max_tokens=2, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
        if first is None and c.choices and (c.choices[0].delta.content or c.choices[0].finish_reason):
            first = time.perf_counter() - t0
        usage = c.usage or usage
    assert first is not None and usage is not None
    return first, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens


def test_identical_long_prompt_hits_the_prefix_cache(replica: ProjectProcess) -> None:
    prompts = [" ".join(f"fact {i} of {tag}: the replica caches prefix blocks." for i in range(120))
               for tag in ("alpha", "beta")]
    colds = [ttft(replica, p) for p in prompts]  # distinct first blocks: no hit between them
    warms = [ttft(replica, p) for p in prompts for _ in range(2)]
    n = colds[0][1]
    assert n > 2500 and all(c[2] == 0 for c in colds)
    assert all(w[2] == (w[1] - 1) // 16 * 16 for w in warms)  # everything but the last partial block hits
    cost = profile(PROFILE)
    predicted = cost.prefill_time(n, warms[0][2]) / cost.prefill_time(n)
    # Load on a shared host only ever adds time: the fastest of each kind is the fairest sample.
    measured = min(w[0] for w in warms) / min(c[0] for c in colds)
    # TTFT falls in proportion to the cached tokens, as the cost model predicts (margin for HTTP and host noise).
    assert predicted < 0.1
    assert measured < predicted + 0.15, (colds, warms, predicted)
    metrics = urllib.request.urlopen(replica.url + "/metrics", timeout=10).read().decode()
    hits = [float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith("foresight_replica_prefix_hit_tokens_total")]
    assert hits and hits[0] >= sum(w[2] for w in warms)


def test_disconnecting_client_frees_its_blocks(replica: ProjectProcess) -> None:
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "go on " * 50}],
                       "stream": True}).encode()
    req = urllib.request.Request(replica.url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "X-Sim-Output-Tokens": "100000"})
    resp = urllib.request.urlopen(req, timeout=30)
    for _ in range(6):
        resp.readline()
    load = get(replica.url + "/load")
    assert load["num_running"] == 1 and load["kv_blocks_used"] > 0
    resp.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        load = get(replica.url + "/load")
        if load["kv_blocks_used"] == 0 and load["num_running"] == 0:
            break
        time.sleep(0.05)
    assert load["kv_blocks_used"] == 0 and load["num_running"] == 0 and load["kv_blocks_cached"] > 0


def test_bad_inputs_through_the_sdk(replica: ProjectProcess) -> None:
    c = client(replica)
    with pytest.raises(openai.BadRequestError) as err:
        c.completions.create(model="tiny", prompt=[7] * 6000, max_tokens=1)
    assert err.value.status_code == 400 and err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    req = urllib.request.Request(replica.url + "/v1/chat/completions", data=b"{oops", method="POST")
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(req, timeout=10)
    assert http_err.value.code == 400 and json.loads(http_err.value.read())["error"]["type"] == "invalid_request_error"
    assert get(replica.url + "/health")["status"] == "ok"
