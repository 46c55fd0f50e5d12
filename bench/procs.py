"""Starting benchmark clusters as real processes: replicas, gateways, external routers; always stopped afterwards.

Each process gets its own session (so stopping it stops its children), a log file under the run's folder, and a
health wait on an HTTP path. ``Fleet`` is a context manager: whatever was started is stopped (SIGTERM, then
SIGKILL) when the block ends, also on errors and Ctrl-C.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def foresight_cmd(*args: str) -> list[str]:
    """The command line of `foresight ARGS` with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "foresight.cli", *args]


def external_cmd(template: str, port: int, replica_urls: Sequence[str]) -> list[str]:
    """A peer router's command line from a template with ``{port}``, ``{aux_port}`` (a second free port, e.g. for
    a metrics listener), ``{replicas}`` (comma-separated URLs) and ``{replicas_space}`` (space-separated)."""
    return shlex.split(template.format(port=port, aux_port=free_port(), replicas=",".join(replica_urls),
                                       replicas_space=" ".join(replica_urls)))


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 200, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not up after {timeout}s")


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM every process, then wait for each and SIGKILL the ones still running after ``timeout``."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


class Proc:
    def __init__(self, name: str, cmd: Sequence[str], port: int, log_dir: Path, health: str = "/health") -> None:
        self.name, self.cmd, self.port, self.health = name, list(cmd), port, health
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def tail(self, n: int = 30) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-n:])
        except OSError:
            return ""

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + self.health, timeout=2) as r:
                    if r.status < 500:
                        return
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not healthy after {timeout:.0f}s:\n{self.tail()}")

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(grace)
        except ProcessLookupError:
            pass


class Fleet:
    """Processes started together and stopped together (reverse order)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    def start(self, name: str, cmd: Sequence[str], port: int, health: str = "/health") -> Proc:
        p = Proc(name, cmd, port, self.log_dir, health).start()
        self.procs.append(p)
        return p

    def replicas(self, n: int, profile: str, model: str, extra: Sequence[str] = ()) -> list[Proc]:
        out = []
        for i in range(n):
            port = free_port()
            out.append(self.start(f"replica{i}", foresight_cmd(
                "replica", "--runner", "sim", "--model", model, "--sim-profile", profile, "--port", str(port),
                "--replica-id", f"r{i}", "--max-model-len", "131072", *extra), port))
        for p in out:
            p.wait_healthy()
        return out

    def gateway(self, name: str, policy: str, replica_urls: Sequence[str], extra: Sequence[str] = ()) -> Proc:
        port = free_port()
        p = self.start(name, foresight_cmd("gateway", "--port", str(port), "--policy", policy,
                                           "--replica", ",".join(replica_urls), *extra), port)
        p.wait_healthy()
        return p

    def external(self, name: str, template: str, replica_urls: Sequence[str]) -> Proc:
        """An external router from a command template (see ``external_cmd``)."""
        port = free_port()
        p = self.start(name, external_cmd(template, port, replica_urls), port, health="/v1/models")
        p.wait_healthy(timeout=120)
        return p
