"""``foresight up``: a local cluster in one command: N replicas and a gateway as child processes.

State is in memory (one gateway) unless ``--redis`` is given. On a machine with GPUs the torch runner gets one
replica per GPU (``--replicas`` defaults to the GPU count, replica i on ``cuda:i``); on CPU it runs ``--replicas``
CPU replicas. Once the gateway is ready it prints the endpoint and a copy-paste ``curl`` and ``openai`` example,
then serves until Ctrl-C or SIGTERM, when it stops the gateway first and then the replicas (each in its own
process group: SIGTERM, then SIGKILL after a grace period). If a child dies on its own, the cluster stops too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from foresight.units import byte_size

log = logging.getLogger("foresight.up")


def gpu_count() -> int:
    """CUDA devices visible to torch (0 without torch or without GPUs)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Child:
    def __init__(self, name: str, cmd: list[str], url: str) -> None:
        self.name, self.cmd, self.url = name, cmd, url
        # Own process group: the terminal's Ctrl-C reaches only us, and we stop children in order.
        self.proc = subprocess.Popen(cmd, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, path: str, timeout: float, stop: list[bool]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop[0]:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} while starting")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        if not stop[0]:
            raise TimeoutError(f"{self.name} not ready at {self.url}{path} after {timeout:.0f}s")

    def stop(self, grace: float) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def replica_cmd(args: argparse.Namespace, i: int, port: int, device: str) -> list[str]:
    cmd = [sys.executable, "-m", "foresight.cli", "--log-level", args.log_level, "replica", "--runner",
           args.runner, "--model", args.model, "--host", args.host, "--port", str(port), "--replica-id", f"r{i}"]
    if args.runner == "torch":
        cmd += ["--device", device]
    if args.redis:
        cmd += ["--redis", args.redis]
    if args.host_kv_memory:
        cmd += ["--host-kv-memory", str(args.host_kv_memory)]
    return cmd


def gateway_cmd(args: argparse.Namespace, urls: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "foresight.cli", "--log-level", args.log_level, "gateway", "--host", args.host,
           "--port", str(args.port)]
    for url in urls:
        cmd += ["--replica", url]
    for flag, value in (("--policy", args.policy), ("--redis", args.redis), ("--admin-token", args.admin_token)):
        if value:
            cmd += [flag, value]
    return cmd


def banner(endpoint: str, model: str, n: int, runner: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello in five words."}],
                       "max_tokens": 32})
    return f"""
Foresight is up: gateway {endpoint} in front of {n} {runner} replica(s) serving '{model}'.

  curl {endpoint}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{endpoint}/v1', api_key='unused'); \\
print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Say hello.'}}], \\
max_tokens=32).choices[0].message.content)"

Metrics: {endpoint}/metrics   Replicas: {endpoint}/admin/replicas (with --admin-token)   Ctrl-C stops everything.
"""


def served_model(endpoint: str) -> str:
    with urllib.request.urlopen(endpoint + "/v1/models", timeout=5) as r:
        data = json.loads(r.read())
    return data["data"][0]["id"]


def run(args: argparse.Namespace) -> int:
    gpus = gpu_count() if args.runner == "torch" else 0
    n = args.replicas if args.replicas is not None else (gpus or 2)
    if n < 1:
        raise SystemExit("foresight up: --replicas must be at least 1")
    ports = [args.replica_port + i for i in range(n)]
    for port in [args.port, *ports]:
        if not port_free(args.host, port):
            raise SystemExit(f"foresight up: port {port} on {args.host} is in use (see --port / --replica-port)")
    stop = [False]

    def on_signal(signum: int, _frame: object) -> None:
        stop[0] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    children: list[Child] = []
    code = 0
    try:
        for i, port in enumerate(ports):
            device = f"cuda:{i % gpus}" if gpus else "cpu"
            children.append(Child(f"replica r{i} ({device})", replica_cmd(args, i, port, device),
                                  f"http://{args.host}:{port}"))
        for child in children:
            child.wait_ready("/health", args.start_timeout, stop)
        gateway = Child("gateway", gateway_cmd(args, [c.url for c in children]), f"http://{args.host}:{args.port}")
        children.append(gateway)
        gateway.wait_ready("/ready", 60, stop)
        if not stop[0]:
            print(banner(gateway.url, served_model(gateway.url), n, args.runner), flush=True)
        while not stop[0]:
            dead = [c for c in children if not c.alive()]
            if dead:
                log.error("%s exited with code %s; stopping the cluster", dead[0].name, dead[0].proc.returncode)
                code = 1
                break
            time.sleep(0.2)
    except (RuntimeError, TimeoutError) as e:
        log.error("%s", e)
        code = 1
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for child in reversed(children):  # the gateway first, so no request reaches a stopping replica
            child.stop(args.grace)
        log.info("stopped %d processes", len(children))
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="Start a local cluster: a gateway and N replicas.", description=__doc__)
    p.add_argument("--replicas", type=int, default=None,
                   help="replica count (default: one per GPU with --runner torch on GPUs, else 2)")
    p.add_argument("--runner", default="torch", choices=["torch", "sim"], help="replica runner")
    p.add_argument("--model", default="smollm2", help="model name (smollm2, tiny) or folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="gateway port")
    p.add_argument("--replica-port", type=int, default=8100, help="first replica port (then +1 each)")
    p.add_argument("--policy", default=None, help="routing policy (default: the gateway's)")
    p.add_argument("--redis", default=None, help="Redis URL for shared state (default: in-memory)")
    p.add_argument("--admin-token", default=None, help="enable /admin/* with this token")
    p.add_argument("--host-kv-memory", type=byte_size, default=0,
                   help="per replica: host RAM for a second KV tier of evicted prefixes (e.g. 64G; default: none)")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for each replica")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL at shutdown")
    p.set_defaults(func=run)
