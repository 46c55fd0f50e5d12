"""``foresight bench overhead``: what the gateway costs, measured against the same backends in the same run.

Starts 2 mock OpenAI backends (``bench/mock_backend.py``) and a gateway (``round_robin``, predictor off) in front
of them, then drives closed-loop load with ``wrk`` (Debian package ``wrk``) at each concurrency: once directly at
the backends (connections split over both, as the gateway splits requests), once through the gateway. Reports
req/s, p50/p99 latency and the ratio to direct; writes JSON and a PNG under ``bench/results/``.

``--external NAME=COMMAND`` (repeatable) measures a peer router in the same run, against the same backends: COMMAND
is a template (``bench.procs.external_cmd``: ``{port}``, ``{aux_port}``, ``{replicas}``, ``{replicas_space}``),
e.g. ``--external "sglang-router=sglang-router launch --host 127.0.0.1 --port {port} --prometheus-port {aux_port}
--worker-urls {replicas_space}"``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.mock_backend import start_mock_backends
from bench.procs import external_cmd, foresight_cmd, free_port, stop_processes, wait_http

BODY = '{"model":"mock","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
LUA = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}



def parse_wrk(out: str) -> dict[str, float]:
    """req/s and latency percentiles (ms) from ``wrk --latency`` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {}
    for p, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        pct[p] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "p50_ms": pct["50"], "p90_ms": pct["90"], "p99_ms": pct["99"],
            "requests": int(total.group(1)) if total else 0, "non_2xx": int(errors.group(1)) if errors else 0}


def run_wrk(urls: list[str], connections: int, duration: float, script: str) -> dict[str, float]:
    """One wrk per URL (connections split evenly), run concurrently; rates add up, percentiles are averaged
    weighted by requests (wrk cannot merge histograms across processes)."""
    per = max(1, connections // len(urls))
    procs = [subprocess.Popen(["wrk", "-t", "1", "-c", str(per), "-d", f"{max(1, round(duration))}s", "--latency", "-s", script,
                               url + "/v1/chat/completions"], stdout=subprocess.PIPE, text=True) for url in urls]
    results = [parse_wrk(p.communicate()[0]) for p in procs]
    total = sum(r["requests"] for r in results) or 1
    out = {"rps": sum(r["rps"] for r in results), "requests": total,
           "non_2xx": sum(r["non_2xx"] for r in results)}
    for k in ("p50_ms", "p90_ms", "p99_ms"):
        out[k] = sum(r[k] * r["requests"] for r in results) / total
    return out


def _row(run: dict, mode: str) -> dict:
    return run[mode] if mode in ("direct", "gateway") else run["external"][mode]


def _compare(direct: dict, via: dict) -> dict:
    return {"throughput_ratio": via["rps"] / direct["rps"] if direct["rps"] else 0.0,
            "added_p50_ms": via["p50_ms"] - direct["p50_ms"], "added_p99_ms": via["p99_ms"] - direct["p99_ms"]}


def _start_external(template: str, backends: list[str], env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = external_cmd(template, port, backends)
    with log.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v1/models", timeout=120)
    except TimeoutError:
        proc.kill()
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"external router did not come up ({' '.join(cmd)}):\n{tail}") from None
    return proc, url


def gateway_cmd(port: int, backends: list[str]) -> list[str]:
    """A quiet round-robin gateway without the predictor in front of ``backends``: the proxy alone."""
    return foresight_cmd("--log-level", "WARNING", "gateway", "--port", str(port), "--policy", "round_robin",
                         "--predictor", "off", *(x for b in backends for x in ("--replica", b)))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = sorted(results["runs"], key=int)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    x = range(len(conc))
    modes = ["direct", "gateway", *results.get("externals", [])]
    w = 0.8 / len(modes)
    for k, mode in enumerate(modes):
        off = (k - (len(modes) - 1) / 2) * w
        label = "foresight" if mode == "gateway" else mode
        a.bar([i + off for i in x], [_row(results["runs"][c], mode)["rps"] for c in conc], w, label=label)
        b.bar([i + off for i in x], [_row(results["runs"][c], mode)["p50_ms"] for c in conc], w, label=label)
    for ax, title in ((a, "throughput (req/s)"), (b, "p50 latency (ms)")):
        ax.set_xticks(list(x), [f"c={c}" for c in conc])
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"gateway overhead vs direct (2 mock backends, delay {results['backend_delay_ms']} ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _report(c: int, label: str, r: dict, cmp: dict | None = None) -> None:
    line = f"c={c:<3} {label:<14} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
    if cmp is not None:
        line += f"  | {cmp['throughput_ratio']:.2f}x direct, {cmp['added_p50_ms']:+.2f} ms p50"
    print(line)


def run(args: argparse.Namespace) -> int:
    from bench.results import output_path, write_json

    if shutil.which("wrk") is None:
        raise SystemExit("foresight bench overhead needs wrk: apt-get install -y wrk")
    procs: list[subprocess.Popen] = []
    tmp = tempfile.mkdtemp(prefix="foresight-overhead-")
    script = os.path.join(tmp, "post.lua")
    Path(script).write_text(LUA)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        backend_procs, backends = start_mock_backends(2, env, args.delay_ms)
        procs += backend_procs
        gport = free_port()
        procs.append(subprocess.Popen(gateway_cmd(gport, backends), env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        gateway = f"http://127.0.0.1:{gport}"
        for url in [*backends, gateway]:
            wait_http(url + "/health")
        externals: dict[str, str] = {}
        for spec in args.external:
            name, sep, template = spec.partition("=")
            if not sep:
                raise SystemExit(f"--external expects NAME=COMMAND, got {spec!r}")
            proc, externals[name.strip()] = _start_external(template.strip(), backends, env,
                                                             Path(tmp) / f"{name.strip()}.log")
            procs.append(proc)
        time.sleep(1.0)  # let the gateway's first probes learn the models
        runs: dict[str, dict] = {}
        for c in args.concurrency:
            run_wrk(backends, c, 1, script)  # warm-up, both paths
            run_wrk([gateway], c, 1, script)
            direct = run_wrk(backends, c, args.duration, script)
            via = run_wrk([gateway], c, args.duration, script)
            runs[str(c)] = {"direct": direct, "gateway": via, **_compare(direct, via), "external": {}}
            _report(c, "direct", direct)
            _report(c, "foresight", via, runs[str(c)])
            for name, url in externals.items():
                run_wrk([url], c, 1, script)
                ext = run_wrk([url], c, args.duration, script)
                runs[str(c)]["external"][name] = {**ext, **_compare(direct, ext)}
                _report(c, name, ext, runs[str(c)]["external"][name])
        results = {"benchmark": "overhead", "load_generator": "wrk", "backends": 2, "policy": "round_robin",
                   "backend_delay_ms": args.delay_ms, "duration_s": args.duration, "runs": runs,
                   "externals": list(externals),
                   "goal": {"concurrency": 8, "min_throughput_ratio": 0.75, "max_added_p50_ms": 0.5}}
        if "8" in runs:
            results["goal"]["met"] = (runs["8"]["throughput_ratio"] >= 0.75 and runs["8"]["added_p50_ms"] <= 0.5)
        out = output_path(args.json, f"overhead{args.tag}")
        write_json(out, results)
        plot(results, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
        return 0
    finally:
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("overhead", help="Gateway overhead vs direct calls to 2 mock backends (wrk).",
                              description=__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--delay-ms", type=float, default=0.0, help="mock backend service time per request")
    p.add_argument("--json", default=None, help="output path (default bench/results/overhead<tag>.json)")
    p.add_argument("--tag", default="", help="suffix of the default output name")
    p.add_argument("--external", action="append", default=[], metavar="NAME=COMMAND",
                   help="a peer router measured in the same run (template with {port}, {aux_port}, {replicas}, {replicas_space})")
    p.set_defaults(func=run)
