"""``foresight bench tracing``: what OpenTelemetry tracing costs the gateway, against tracing off in the same run.

Starts 2 mock OpenAI backends (``bench/mock_backend.py``), an OTLP/HTTP sink in this process (counts the spans it
decodes), and one gateway per mode in front of the same backends:

- ``off``: no ``OTEL_*`` variables (the default: no SDK imported, no middleware installed);
- ``sampled_out``: tracing on with ``OTEL_TRACES_SAMPLER=always_off`` (spans created, none recorded or exported);
- ``on``: tracing on, every request exported over OTLP/HTTP to the sink.

Drives closed-loop load with ``wrk`` (Debian package ``wrk``), modes interleaved over ``--rounds`` so drift in
machine load hits all of them alike; reports the best round per mode (req/s, p50/p99) and the ratio to ``off``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

MODES = {
    "off": {},
    "sampled_out": {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "always_off"},
    "on": {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "always_on"},
}


class SpanSink:
    """An OTLP/HTTP trace endpoint on its own thread; ``spans`` counts what it decoded."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.spans = 0
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    async def _start(self) -> None:
        from aiohttp import web
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        ok = ExportTraceServiceResponse().SerializeToString()

        async def traces(request: web.Request) -> web.Response:
            req = ExportTraceServiceRequest()
            req.ParseFromString(await request.read())
            self.spans += sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
            return web.Response(body=ok, content_type="application/x-protobuf")

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", traces)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results["modes"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.bar(modes, [results["modes"][m]["rps"] for m in modes])
    a.set_title("gateway throughput (req/s)")
    for i, key in enumerate(("p50_ms", "p99_ms")):
        b.bar([x + 0.4 * i - 0.2 for x in range(len(modes))], [results["modes"][m][key] for m in modes], 0.4,
              label=key)
    b.set_xticks(range(len(modes)), modes)
    b.set_title("latency (ms)")
    b.legend()
    fig.suptitle(f"tracing cost at the gateway (c={results['concurrency']}, 2 mock backends)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(args: argparse.Namespace) -> int:
    from bench.mock_backend import start_mock_backends
    from bench.overhead import LUA, gateway_cmd, run_wrk
    from bench.procs import free_port, stop_processes, wait_http
    from bench.results import output_path, write_json

    if shutil.which("wrk") is None:
        raise SystemExit("foresight bench tracing needs wrk: apt-get install -y wrk")
    tmp = tempfile.mkdtemp(prefix="foresight-tracing-")
    script = os.path.join(tmp, "post.lua")
    Path(script).write_text(LUA)
    sink = SpanSink(free_port())
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    base["PYTHONUNBUFFERED"] = "1"
    procs: list[subprocess.Popen] = []
    try:
        backend_procs, backends = start_mock_backends(2, base)
        procs += backend_procs
        gateways: dict[str, str] = {}
        for mode, extra in MODES.items():
            port = free_port()
            env = {**base, **extra}
            if extra:
                env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink.port}", OTEL_SERVICE_NAME=f"gw-{mode}")
            procs.append(subprocess.Popen(gateway_cmd(port, backends), env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            gateways[mode] = f"http://127.0.0.1:{port}"
        for url in [*backends, *gateways.values()]:
            wait_http(url + "/health")
        time.sleep(1.0)  # the gateways' first probes learn the backends' models
        rounds: dict[str, list[dict]] = {m: [] for m in MODES}
        for url in gateways.values():
            run_wrk([url], args.concurrency, 1, script)  # warm-up
        for r in range(args.rounds):
            for mode, url in gateways.items():
                rounds[mode].append(run_wrk([url], args.concurrency, args.duration, script))
                print(f"round {r + 1} {mode:<12} {rounds[mode][-1]['rps']:8.0f} req/s "
                      f"p50 {rounds[mode][-1]['p50_ms']:.2f} ms p99 {rounds[mode][-1]['p99_ms']:.2f} ms")
        time.sleep(2.0)  # the last batch of spans reaches the sink
        best = {m: max(rs, key=lambda x: x["rps"]) for m, rs in rounds.items()}
        results = {"benchmark": "tracing", "load_generator": "wrk", "backends": 2, "concurrency": args.concurrency,
                   "duration_s": args.duration, "rounds": rounds, "modes": best, "spans_exported": sink.spans,
                   "requests_traced": sum(x["requests"] for x in rounds["on"]),
                   "throughput_ratio_vs_off": {m: best[m]["rps"] / best["off"]["rps"] for m in best},
                   "added_p50_ms_vs_off": {m: best[m]["p50_ms"] - best["off"]["p50_ms"] for m in best},
                   "loadavg": os.getloadavg()}
        for m in MODES:
            print(f"{m:<12} best {best[m]['rps']:8.0f} req/s ({results['throughput_ratio_vs_off'][m]:.2f}x off), "
                  f"p50 {best[m]['p50_ms']:.2f} ms (+{results['added_p50_ms_vs_off'][m]:.2f} ms)")
        print(f"spans exported: {sink.spans} for {results['requests_traced']} traced requests")
        out = output_path(args.json, f"tracing{args.tag}")
        write_json(out, results)
        plot(results, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
        return 0
    finally:
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tracing", help="Gateway cost of OpenTelemetry tracing (off / sampled out / on).",
                              description=__doc__)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per mode")
    p.add_argument("--json", default=None, help="output path (default bench/results/tracing<tag>.json)")
    p.add_argument("--tag", default="", help="suffix of the default output name")
    p.set_defaults(func=run)
