"""The `sim` profile of docker-compose.yml started as local processes (see compose_local.py), plus test traffic.

Services start level by level in ``depends_on`` order, each level in parallel, and count as up when their own
compose health check command passes. Prometheus scrapes every second here (5 s in the compose file) so a test
needs few seconds of traffic; that interval is the only change to the project's prometheus.yml besides ports.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.procs import ProcessManager, ProjectProcess
from tests.observability.compose_local import LocalCompose, LocalService, resolved_model
from tests.observability.otlp_receiver import OTLPReceiver


@dataclass
class Cluster:
    compose: LocalCompose
    services: dict[str, LocalService]
    running: dict[str, ProjectProcess] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.services[name].port}"


def levels(services: dict[str, LocalService]) -> list[list[str]]:
    """Services grouped so that each group depends only on earlier groups."""
    done: set[str] = set()
    out: list[list[str]] = []
    while len(done) < len(services):
        ready = sorted(n for n, s in services.items() if n not in done and set(s.depends_on) <= done)
        assert ready, f"dependency cycle among {set(services) - done}"
        out.append(ready)
        done |= set(ready)
    return out


def healthy(svc: LocalService) -> bool:
    assert svc.healthcheck is not None, f"{svc.name}: health check command cannot run here"
    try:
        return subprocess.run(svc.healthcheck, capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def wait_healthy(svc: LocalService, proc: ProjectProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(svc):
        if not proc.alive():
            raise RuntimeError(f"{svc.name} exited: {svc.cmd}\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{svc.name} not healthy after {timeout}s: {svc.cmd}\n{proc.log_tail()}")
        time.sleep(0.2)


def start_cluster(procs: ProcessManager, workdir: Path, receiver: OTLPReceiver, profile: str = "sim",
                  timeout: float = 120.0) -> Cluster:
    compose = LocalCompose(resolved_model(profile), workdir,
                           extra_hosts={"jaeger:4318": receiver.endpoint.removeprefix("http://")})
    cluster = Cluster(compose, {name: compose.service(name) for name in compose.model["services"]})
    prom = cluster.services["prometheus"]
    if prom.cmd is not None:
        config = next(a.split("=", 1)[1] for a in prom.cmd if a.startswith("--config.file="))
        text = Path(config).read_text()
        Path(config).write_text(text.replace("scrape_interval: 5s", "scrape_interval: 1s"))
    for level in levels(cluster.services):
        batch = []
        for name in level:
            svc = cluster.services[name]
            if svc.cmd is None:
                cluster.skipped[name] = svc.missing
                continue
            proc = procs.spawn(svc.cmd, svc.port, env=svc.env, wait=False)
            cluster.running[name] = proc
            batch.append((svc, proc))
        for svc, proc in batch:
            wait_healthy(svc, proc, timeout)
    return cluster
