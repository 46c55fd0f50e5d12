"""`foresight bench replay`: open-loop trace replay against any OpenAI-compatible endpoint.

    foresight bench replay --target http://127.0.0.1:8000 --trace mooncake_conversation_trace.jsonl.gz \
        --speedup 4 --duration 120 --slo-ttft 2 --slo-tpot 0.1 --json out.json --plot out.png

Traces: Mooncake JSONL (hash ids become token-exact shared prompt blocks, see ``bench.prompts``), Azure CSV
(lengths only), or ``--content`` (AlpacaEval JSONL: real prompts with their real response lengths) on the trace's
arrivals or Poisson arrivals at ``--rate``. Output lengths are forced with ``X-Sim-Output-Tokens``, ``max_tokens``
and ``ignore_eos`` (the body's fields reach the replicas through routers that drop unknown headers); the summary
counts completed requests whose length still differs (``output_length_mismatch``). With ``--replica-metrics`` (the replicas' base URLs), the prefix-cache hit rate over the replay is
read from their Prometheus ``/metrics`` (before/after counter deltas).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import orjson

TRACE_DEFAULT = "traces/mooncake_conversation_trace.jsonl.gz"


def build_workload(args: argparse.Namespace, synth: Any) -> list:
    from bench import traces

    def data_path(p: str) -> Path:
        path = Path(p)
        if not path.exists():
            from bench.results import shared_data_dir

            path = shared_data_dir() / p
        if not path.exists():
            raise FileNotFoundError(f"{p} not found (looked beside the working dir and in the shared data dir)")
        return path

    trace = traces.load_trace(data_path(args.trace)) if args.trace else None
    if trace is not None and getattr(args, "spread_ties", False):
        trace = traces.spread_ties(trace, args.seed)
    if args.content:
        items = traces.load_content(data_path(args.content))
        if trace is not None:
            arrivals = [r.arrival_s for r in trace]
        else:
            if not args.rate:
                raise ValueError("--content without --trace needs --rate for Poisson arrivals")
            n = args.max_requests or int(args.rate * (args.duration or 60))
            arrivals = traces.poisson_arrivals(n, args.rate, args.seed)
        reqs = traces.with_content(arrivals, items, synth.count, seed=args.seed)
        if trace is None:
            return traces.shape(reqs, duration=args.duration, max_requests=args.max_requests)
    elif trace is not None:
        reqs = trace
    else:
        raise ValueError("give --trace and/or --content")
    return traces.shape(reqs, speedup=args.speedup, rate=args.rate, duration=args.duration, start=args.start,
                        max_requests=args.max_requests)


def prepare(reqs: list, synth: Any, model: str, api: str, force_output: bool, debug: bool) -> list:
    from bench.replay_client import Prepared

    out = []
    for r in reqs:
        prompt = r.prompt if r.prompt is not None else synth.text(r)
        headers = {"Content-Type": "application/json"}
        if force_output:
            headers["X-Sim-Output-Tokens"] = str(r.output_length)
        if debug:
            headers["X-Foresight-Debug"] = "1"
        body: dict[str, Any] = {"model": model, "max_tokens": r.output_length, "stream": True,
                                "stream_options": {"include_usage": True}}
        if force_output:
            # The header alone is not enough: a router may drop headers it does not know (sglang-router does),
            # and a simulated replica then ends the answer at a random EOS, so that router's fleet does less
            # work. ``ignore_eos`` (vLLM's and SGLang's sampling extension) travels in the body, which every
            # router passes on; with ``max_tokens`` it forces the length on any engine.
            body["ignore_eos"] = True
        if api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            path = "/v1/chat/completions"
        else:
            body["prompt"] = prompt
            path = "/v1/completions"
        out.append(Prepared(r.index, r.arrival_s, path, orjson.dumps(body), headers, r.input_length, r.output_length))
    return out


async def _first_model(target: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(target + "/v1/models",
                                                   timeout=aiohttp.ClientTimeout(total=10)) as resp:
        data = await resp.json()
    return data["data"][0]["id"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench import latency
    from bench.prom import prefix_hit_rate, scrape_all
    from bench.prompts import PromptSynth, resolve_tokenizer_dir
    from bench.replay_client import run_open_loop
    from bench.traces import prefix_ceiling

    target = args.target.rstrip("/")
    synth = PromptSynth(resolve_tokenizer_dir(args.tokenizer))
    reqs = build_workload(args, synth)
    if not reqs:
        raise SystemExit("replay: the window holds no requests")
    model = args.model or asyncio.run(_first_model(target))
    api = args.api or ("chat" if args.content else "completions")
    prepared = prepare(reqs, synth, model, api, not args.no_force_output, args.debug_route)
    replica_urls = [u.strip().rstrip("/") for u in (args.replica_metrics or "").split(",") if u.strip()]
    before = asyncio.run(scrape_all(replica_urls)) if replica_urls else None
    results, wall = asyncio.run(run_open_loop(target, prepared, timeout=args.timeout, progress=not args.quiet))
    summary = latency.summarize(results, wall, args.slo_ttft, args.slo_tpot)
    if before is not None:
        after = asyncio.run(scrape_all(replica_urls))
        summary["prefix_hit_rate"] = prefix_hit_rate(before, after)
    summary["prefix_ceiling"] = prefix_ceiling(reqs)
    summary.update(target=target, trace=args.trace, content=args.content, speedup=args.speedup, rate=args.rate,
                   window_s=args.duration, model=model, api=api)
    out: dict[str, Any] = {"summary": summary}
    if args.keep_results:
        from dataclasses import asdict

        out["results"] = [asdict(r) for r in results]
    out["ttft"] = [r.ttft for r in results if r.ttft is not None]
    if args.json:
        from bench.results import write_json

        write_json(args.json, out)
    if args.plot:
        latency.ttft_cdf_plot({target: out["ttft"]}, args.plot, f"TTFT CDF ({Path(args.trace or args.content).name})")
    return out


def add_workload_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by every benchmark that replays a workload."""
    p.add_argument("--trace", default=None, help="Mooncake .jsonl[.gz] or Azure .csv[.gz] (path, or relative "
                   "to the shared data dir)")
    p.add_argument("--content", default=None, help="prompt dataset (AlpacaEval JSONL) for real prompts + lengths")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--speedup", type=float, default=None, help="divide the trace's arrival times by X")
    rate.add_argument("--rate", type=float, default=None, help="rescale arrivals to a mean rate (req/s)")
    p.add_argument("--duration", type=float, default=None, help="keep the first S seconds of (scaled) arrivals")
    p.add_argument("--start", type=float, default=0.0, help="skip the trace's first S seconds (unscaled)")
    p.add_argument("--max-requests", type=int, default=None)
    p.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT SLO in seconds")
    p.add_argument("--slo-tpot", type=float, default=0.1, help="time-per-output-token SLO in seconds")
    p.add_argument("--tokenizer", default="tiny", help="model folder (or name) whose tokenizer the target uses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spread-ties", action="store_true", help="spread requests sharing a timestamp over the "
                   "trace's time step (Mooncake's ~3 s resolution) instead of sending them in the same instant")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("replay", help="open-loop trace replay against an OpenAI-compatible endpoint")
    p.add_argument("--target", required=True, help="base URL (gateway, replica or another router)")
    add_workload_args(p)
    p.add_argument("--model", default=None, help="model name (default: the target's first /v1/models entry)")
    p.add_argument("--api", choices=("completions", "chat"), default=None,
                   help="endpoint (default: completions for traces, chat for --content)")
    p.add_argument("--no-force-output", action="store_true", help="do not force output lengths (X-Sim-Output-Tokens, ignore_eos)")
    p.add_argument("--debug-route", action="store_true", help="send X-Foresight-Debug: 1 (keeps route headers)")
    p.add_argument("--replica-metrics", default=None, help="comma-separated replica base URLs for the hit rate")
    p.add_argument("--json", default=None, help="write the summary JSON here")
    p.add_argument("--plot", default=None, help="write a TTFT CDF PNG here")
    p.add_argument("--keep-results", action="store_true", help="include per-request results in the JSON")
    p.add_argument("--quiet", action="store_true")

    def _main(args: argparse.Namespace) -> int:
        out = run(args)
        print(orjson.dumps(out["summary"], option=orjson.OPT_INDENT_2).decode())
        return 0

    p.set_defaults(func=_main)
