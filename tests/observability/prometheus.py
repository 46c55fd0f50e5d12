"""A real Prometheus for tests: Debian's `prometheus` binary (installed with apt when missing and possible),
started on a free port with a given config, queried through its HTTP API."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.procs import ProcessManager, ProjectProcess, free_port


def ensure_debian_binary(binary: str, package: str) -> str:
    """``binary``'s path; installs Debian's ``package`` when it is absent and apt-get can run, else skips."""
    found = shutil.which(binary)
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        install = ["apt-get", "install", "-y", "--no-install-recommends", package]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(install, capture_output=True, env=env, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
            subprocess.run(install, capture_output=True, env=env, timeout=600)
        found = shutil.which(binary)
        if found:
            return found
    pytest.skip(f"{binary} is not installed and apt-get cannot install it here (apt-get install {package})")


def ensure_prometheus() -> str:
    """The prometheus binary (Debian's package), installed when missing and possible, else the test skips."""
    return ensure_debian_binary("prometheus", "prometheus")


def start_prometheus(procs: ProcessManager, config_text: str, port: int | None = None,
                     extra_args: list[str] | None = None) -> ProjectProcess:
    binary = ensure_prometheus()
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="foresight-prom-"))
    config = workdir / "prometheus.yml"
    config.write_text(config_text)
    cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", *(extra_args or [])]
    return procs.spawn(cmd, port, health_path="/-/ready", timeout=60)


def query(base_url: str, expr: str) -> list[dict]:
    """An instant query at now; returns the result vector (raises on a PromQL error)."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise AssertionError(f"{expr!r}: {body}")
    data = body["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def has_finite_value(result: list[dict]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in result)


def targets_health(base_url: str) -> dict[str, str]:
    with urllib.request.urlopen(f"{base_url}/api/v1/targets", timeout=10) as r:
        body = json.load(r)
    return {t["scrapeUrl"]: t["health"] for t in body["data"]["activeTargets"]}


def wait_until(check, timeout: float, interval: float = 0.5):
    """Poll ``check()`` until it returns a truthy value; returns the last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
