"""The harness itself: real Redis over TCP, the tiny model through `from_pretrained`, no leaked processes."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import redis

from tests.helpers.procs import ProcessManager, free_port


def test_redis_fixture_serves_over_tcp(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("foresight:test", b"value")
    assert client.get("foresight:test") == b"value"
    assert client.connection_pool.connection_kwargs["port"] != 6379  # our own server, not the machine's


def test_tiny_model_generates_through_from_pretrained(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (tiny_model_dir / "model.safetensors").exists() and (tiny_model_dir / "tokenizer.json").exists()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama" and 64 <= model.config.hidden_size <= 256
    ids = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8
    assert isinstance(tok.decode(out[0]), str)


SERVER = textwrap.dedent(
    """
    import subprocess, sys
    from aiohttp import web
    # A grandchild, to prove the whole process group is cleaned up.
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    app = web.Application()
    app.router.add_get("/health", lambda r: web.json_response({"ok": True}))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
    """
)


def test_process_helpers_leave_nothing_behind(tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    manager = ProcessManager()
    port = free_port()
    proc = manager.spawn([sys.executable, str(script), str(port)], port)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the server should have spawned a grandchild"
    pids = [proc.pid] + [c.pid for c in children]
    manager.cleanup()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_process_helper_reports_a_failed_start() -> None:
    manager = ProcessManager()
    try:
        with pytest.raises(RuntimeError, match="exited"):
            manager.spawn([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], free_port(), timeout=10)
    finally:
        manager.cleanup()
