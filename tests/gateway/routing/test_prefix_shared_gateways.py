"""Two real gateway processes on one Redis send a conversation's turns to the same replica (approximate index)."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from tests.helpers.procs import ProcessManager, foresight_cmd, free_port

pytestmark = pytest.mark.slow

def system(conv: int) -> str:
    """A long system prompt per conversation, so conversations do not share a prefix with each other."""
    return "".join(f"Conversation {conv}: you are a meticulous assistant; rule {i} applies. " for i in range(30))


def test_second_gateway_follows_the_first_gateways_routing(procs: ProcessManager, tiny_model_dir: Path,
                                                           redis_url: str) -> None:
    urls = []
    for i in range(3):
        port = free_port()
        urls.append(procs.spawn(foresight_cmd(
            "replica", "--runner", "sim", "--model", str(tiny_model_dir), "--served-model-name", "tiny",
            "--port", str(port), "--replica-id", f"r{i}", "--max-model-len", "4096"), port).url)
    gateways = []
    for g in range(2):
        port = free_port()
        gateways.append(procs.spawn(foresight_cmd(
            "gateway", "--port", str(port), "--policy", "prefix", "--predictor", "off", "--redis", redis_url,
            "--gateway-id", f"gw{g}", "--replica", ",".join(urls)), port))
    clients = [openai.OpenAI(base_url=g.url + "/v1", api_key="none", max_retries=0) for g in gateways]

    def ask(client: openai.OpenAI, conv: int, turn: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", max_tokens=2, messages=[{"role": "system", "content": system(conv)},
                                                  {"role": "user", "content": turn}],
            extra_headers={"X-Sim-Output-Tokens": "2"})
        return raw.headers["X-Foresight-Replica"]

    # Without sharing, gateway 1 would pick among 3 idle replicas at random: a false pass has odds (1/3)^4.
    for conv in range(4):
        home = ask(clients[0], conv, "first turn")
        time.sleep(0.5)  # a few sharing intervals (100 ms) for the delta to reach the other gateway
        followers = {ask(clients[1], conv, f"first turn; and a follow-up {k}") for k in range(3)}
        assert followers == {home}, (conv, home, followers)
