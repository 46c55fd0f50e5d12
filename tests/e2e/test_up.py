"""`foresight up` as a real process: it starts replicas and a gateway, prints a curl that answers, and stops all."""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import time

import pytest

from tests.helpers.procs import ProcessManager, foresight_cmd, free_port

pytestmark = pytest.mark.slow


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def adjacent_free_ports() -> int:
    """A port p with p + 1 free too (`foresight up` numbers replicas from --replica-port upward)."""
    for _ in range(100):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no two adjacent free ports")


def test_up_prints_a_working_curl_and_stops_everything_on_sigterm(procs: ProcessManager) -> None:
    port, rport = free_port(), adjacent_free_ports()
    up = procs.spawn(foresight_cmd("up", "--runner", "sim", "--model", "tiny", "--replicas", "2", "--port",
                                   str(port), "--replica-port", str(rport)), port, health_path="/ready", timeout=120)
    deadline = time.monotonic() + 30
    while "curl " not in up.log_tail(200) and time.monotonic() < deadline:
        time.sleep(0.2)
    curl = next(line.strip() for line in up.log_tail(200).splitlines() if line.strip().startswith("curl "))
    assert re.search(rf"http://127\.0\.0\.1:{port}/v1/chat/completions", curl)
    out = subprocess.run(shlex.split(curl) + ["-s", "--max-time", "60"], capture_output=True, text=True, timeout=90)
    assert '"chat.completion"' in out.stdout and '"content"' in out.stdout, out.stdout + out.stderr
    assert listening(rport) and listening(rport + 1)
    up.proc.send_signal(signal.SIGTERM)  # only the `up` process: it must stop its children itself
    assert up.proc.wait(60) == 0
    assert not listening(port) and not listening(rport) and not listening(rport + 1)
