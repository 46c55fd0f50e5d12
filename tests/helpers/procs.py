"""Start project processes (replica, gateway, ...) as real subprocesses on free ports, and always clean up.

Each process runs in its own session (process group) so that stopping it also stops whatever it spawned
(`foresight up` starts children). Output goes to a log file whose tail is shown when a start fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from bench.procs import foresight_cmd, free_port

__all__ = ["ProcessManager", "ProjectProcess", "foresight_cmd", "free_port"]




class ProjectProcess:
    """A subprocess serving HTTP on ``port``; ``url`` is its base address."""

    def __init__(self, cmd: Sequence[str], port: int, env: dict[str, str] | None = None,
                 health_path: str = "/health") -> None:
        self.cmd = list(cmd)
        self.port = port
        self.health_path = health_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log = tempfile.NamedTemporaryFile(prefix="foresight-proc-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ProjectProcess:
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        return self

    def log_tail(self, n: int = 60) -> str:
        with open(self.log.name, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def wait_healthy(self, timeout: float = 60.0) -> ProjectProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"process exited with {self.proc.returncode}: {self.cmd}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + self.health_path, timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.cmd} not healthy after {timeout}s\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                # The leader exited; make sure nothing else of its group survives.
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            break
        if self.proc.poll() is None:
            self.proc.wait(5)


class ProcessManager:
    """Spawns ProjectProcesses and stops all of them on ``cleanup()`` (a fixture's teardown)."""

    def __init__(self) -> None:
        self.procs: list[ProjectProcess] = []

    def spawn(self, cmd: Sequence[str], port: int, *, env: dict[str, str] | None = None, wait: bool = True,
              health_path: str = "/health", timeout: float = 60.0) -> ProjectProcess:
        p = ProjectProcess(cmd, port, env, health_path).start()
        self.procs.append(p)
        if wait:
            p.wait_healthy(timeout)
        return p

    def cleanup(self) -> None:
        for p in reversed(self.procs):
            p.stop()
            try:
                os.unlink(p.log.name)
            except OSError:
                pass
        self.procs.clear()
