"""``foresight bench chaos fuzz``: generated hostile input against a live gateway with a sim replica behind it.

Two generators, both Hypothesis strategies (so the inputs are diverse and reproducible with its seed):
- ``openai_request``: bodies following the OpenAI request schema where each field is either valid or replaced by
  arbitrary JSON (wrong types, out-of-range numbers, huge strings, nesting), sometimes serialised with NaN or
  truncated, sent over keep-alive HTTP to both completion routes and a few other paths;
- ``raw_request``: raw bytes over a fresh socket: random request lines, methods, versions, header names and
  values (control bytes, no colon, huge), conflicting or bogus ``Content-Length`` / ``Transfer-Encoding`` and
  random bodies.
Reported: answers by status class, ``server_errors`` (>= 500: goal 0), ``crashes`` (the gateway died or stopped
answering ``/health``: goal 0), the gateway's RSS before and after (stable memory), and a schemathesis run against
the gateway's ``/openapi.json`` (server errors: goal 0; its other checks, schema conformance, reported as found).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections import Counter

from bench.chaos_cluster import Cluster, get_json, rss_bytes


def encode(body: object, how: str) -> bytes:
    """JSON text of ``body``: as is (NaN, 70-bit integers and lone surrogates, i.e. invalid UTF-8, included),
    ASCII-escaped, or cut in half."""
    if how == "ascii":
        return json.dumps(body, default=str).encode()
    data = json.dumps(body, default=str, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return data[: max(1, len(data) // 2)] if how == "truncate" else data


class Fuzzer:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.statuses: Counter[str] = Counter()
        self.examples: list[str] = []
        self.conn = http.client.HTTPConnection(host, port, timeout=30)

    def record(self, status: int | None, what: str) -> None:
        key = "closed" if status is None else f"{status // 100}xx"
        self.statuses[key] += 1
        if status is not None and status >= 500 and len(self.examples) < 20:
            self.examples.append(f"{status}: {what[:300]}")

    def http(self, path: str, body: object, how: str) -> None:
        data = encode(body, how)
        for attempt in range(2):
            try:
                self.conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                resp.read()
                self.record(resp.status, f"{path} {data!r}")
                return
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    self.record(None, "")

    def raw(self, method: bytes, target: bytes, version: bytes, headers: list, body: bytes) -> None:
        head = b" ".join(x for x in (method, target, version) if x) + b"\r\n"
        head += b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
        status = None
        try:
            with socket.create_connection((self.host, self.port), timeout=10) as s:
                s.sendall(head + body)
                s.shutdown(socket.SHUT_WR)
                first = s.recv(64)
                if first.startswith(b"HTTP/"):
                    status = int(first.split(b" ", 2)[1])
        except (OSError, ValueError, IndexError):
            status = None
        self.record(status, repr(head + body))


def fuzz_cluster() -> Cluster:
    """One sim replica with short answers behind a gateway without a per-connection rate (so every request
    reaches validation and routing)."""
    return Cluster(replicas=1, replica_args=("--sim-output-mean", "4"),
                   gateway_args=("--max-tokens-limit", "64", "--conn-rate", "0")).start()


def fuzz(requests: int = 10_000, seed: int = 0, cluster: Cluster | None = None, all_checks: bool = True) -> dict:
    from bench._chaos_strategies import openai_request, raw_request, run_examples

    cl = cluster or fuzz_cluster()
    try:
        gw = cl.gateways[0]
        fz = Fuzzer("127.0.0.1", gw.port)
        t0 = time.monotonic()
        warm = max(1, requests // 20)
        run_examples(openai_request, warm, fz.http, seed)
        rss_start = rss_bytes(gw.pid)
        n_http = requests * 6 // 10 - warm
        run_examples(openai_request, n_http, fz.http, seed + 1)
        run_examples(raw_request, requests - n_http - warm, fz.raw, seed + 2)
        schema_run = schemathesis_run(gw.url, max(20, requests // 50), all_checks)
        alive = gw.popen is not None and gw.popen.poll() is None
        healthy = alive and get_json(gw.url + "/health").get("status") == "ok"
        rss_end = rss_bytes(gw.pid) if alive else 0
        elapsed = time.monotonic() - t0
    finally:
        if cluster is None:
            cl.close()
    total = sum(fz.statuses.values())
    return {"scenario": "fuzz", "requests": total, "elapsed_s": elapsed, "by_status": dict(fz.statuses),
            "server_errors": sum(v for k, v in fz.statuses.items() if k.startswith("5")),
            "crashes": 0 if healthy else 1, "gateway_rss_start_mb": rss_start / 2**20,
            "gateway_rss_end_mb": rss_end / 2**20, "rss_growth": rss_end / rss_start - 1 if rss_start else None,
            "server_error_examples": fz.examples, "schemathesis": schema_run}


def schemathesis_run(gateway: str, examples: int, all_checks: bool = True) -> dict:
    """schemathesis against ``/openapi.json``: the server-error check (the goal), then every check (reported)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("schemathesis")
    if not exe.exists():
        return {"skipped": "schemathesis not installed"}
    out = {}
    for checks in ("not_a_server_error", "all") if all_checks else ("not_a_server_error",):
        done = subprocess.run([str(exe), "run", gateway + "/openapi.json", "--checks", checks, "-n", str(examples),
                               "--seed", "1"], capture_output=True, text=True, timeout=900)
        m = re.search(r"(\d+) generated", done.stdout)
        failures = re.findall(r"❌ (ST\d+ [^:]+): (\d+)", done.stdout)
        out[checks] = {"returncode": done.returncode, "generated": int(m.group(1)) if m else None,
                       "failures": {name: int(n) for name, n in failures}}
    return out
