"""`foresight bench routing`: the same workload through each routing policy, on fresh replicas, at rising rates.

    foresight bench routing --replicas 8 --sim-profile h100-llama8b \
        --trace traces/mooncake_conversation_trace.jsonl.gz --start 600 --duration 120 --speedups 1,2,3,4 \
        --policies round_robin,least_load,prefix,foresight [--external NAME=COMMAND] [--mode live|sim]

Modes: ``live`` starts real processes per policy and load level (``--replicas`` simulated replicas, one or more
gateways, or an external router from a command template with ``{port}`` and ``{replicas}``) and replays the
workload open-loop over HTTP (``bench.replay``); ``sim`` runs the same policies in the discrete-event simulation
(``bench.des``: the real scheduler, block pool, cost model and policy code on a virtual clock), which is what a
2-core machine can run at the rates where the policies differ.

A policy item is ``NAME`` or ``LABEL=NAME?k=v&k=v``: ``predictor=off|default`` (live gateway flag),
``estimator=history|oracle`` (sim) and ``shed=SECONDS`` (the gateway's ``--shed-queue-delay``, both modes; the
DES models shedding off unless given, live takes the gateway's default) are read by the harness, any other key is
a ``--policy-opt``.
``--jobs N`` runs up to N DES runs side by side (sim mode; results are the same, on a virtual clock).
Goodput: the largest tested rate at which at least 90% of requests met both SLOs (rejections and failures count
as misses). Writes one JSON with every run, a table on stdout, a TTFT CDF per policy and a goodput curve.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

GOODPUT_ATTAINMENT = 0.9


@dataclass
class Variant:
    label: str
    policy: str
    options: dict[str, str] = field(default_factory=dict)
    harness: dict[str, str] = field(default_factory=dict)
    external: str | None = None  # command template of an external router


HARNESS_KEYS = ("predictor", "estimator", "shed")


def parse_variants(policies: str, externals: list[str]) -> list[Variant]:
    out = []
    for item in filter(None, (p.strip() for p in policies.split(","))):
        head, _, query = item.partition("?")  # a label is named before the query, whose values have "=" too
        label, sep, name = head.partition("=")
        if not sep:
            name = label
        pairs = dict(parse_qsl(query))
        out.append(Variant(label, name, {k: v for k, v in pairs.items() if k not in HARNESS_KEYS},
                           {k: v for k, v in pairs.items() if k in HARNESS_KEYS}))
    for ext in externals:
        label, sep, cmd = ext.partition("=")
        if not sep or not cmd.strip():
            raise ValueError(f"--external expects NAME=COMMAND, got {ext!r}")
        out.append(Variant(label.strip(), "external", external=cmd.strip()))
    return out


def goodput(rows: list[dict[str, Any]]) -> float | None:
    """Largest offered rate among ``rows`` (one policy) with SLO attainment >= 90%."""
    ok = [r["offered_rps"] for r in rows if (r.get("slo_attainment") or 0) >= GOODPUT_ATTAINMENT]
    return max(ok) if ok else None


def levels(args: argparse.Namespace) -> list[tuple[str, float]]:
    if getattr(args, "add_results", None) and not (args.rates or args.speedups or args.rate or args.speedup):
        return []  # a report of stored runs only
    if args.rates:
        return [("rate", float(x)) for x in args.rates.split(",")]
    if args.speedups:
        return [("speedup", float(x)) for x in args.speedups.split(",")]
    if args.rate:
        return [("rate", args.rate)]
    return [("speedup", args.speedup or 1.0)]


def report(runs: list[dict[str, Any]], variants: list[Variant]) -> dict:
    by_label: dict[str, list[dict[str, Any]]] = {v.label: [] for v in variants}
    for r in runs:
        by_label[r["label"]].append(r)
    table = {}
    for label, rows in by_label.items():
        top = max(rows, key=lambda r: r["offered_rps"]) if rows else {}
        table[label] = {"goodput_rps": goodput(rows), "ttft_p90_at_top": top.get("ttft_p90"),
                        "slo_attainment_at_top": top.get("slo_attainment"),
                        "prefix_hit_rate_at_top": top.get("prefix_hit_rate")}
    ratios: dict[str, Any] = {}
    lead = next((v.label for v in variants if v.policy == "foresight"), None)
    if lead:
        for base in by_label:
            if base == lead:
                continue
            g_lead, g_base = table[lead]["goodput_rps"], table[base]["goodput_rps"]
            ratios[f"goodput {lead}/{base}"] = (g_lead / g_base) if g_lead and g_base else None
            per_level = {}
            for r in by_label[lead]:
                other = next((o for o in by_label[base] if o["level"] == r["level"]), None)
                if other and other.get("ttft_p90") and r.get("ttft_p90") is not None:
                    per_level[str(r["level"])] = r["ttft_p90"] / other["ttft_p90"]
            ratios[f"ttft_p90 {lead}/{base} by level"] = per_level
        ratios["prefix hit rate / ceiling by level"] = {
            str(r["level"]): r["prefix_hit_rate"] / r["prefix_ceiling"] for r in by_label[lead]
            if r.get("prefix_hit_rate") is not None and r.get("prefix_ceiling")}
        ratios["prefix hit rate / fleet-LRU bound by level"] = {
            str(r["level"]): r["prefix_hit_rate"] / r["fleet_lru_bound"] for r in by_label[lead]
            if r.get("prefix_hit_rate") is not None and r.get("fleet_lru_bound")}
    return {"table": table, "ratios": ratios}


def print_table(result: dict) -> None:
    print(f"{'policy':<22}{'goodput rps':>12}{'p90 TTFT@top':>14}{'SLO@top':>9}{'hit@top':>9}")
    for label, row in result["table"].items():
        def f(x: Any, fmt: str) -> str:
            return format(x, fmt) if isinstance(x, int | float) else "-"
        print(f"{label:<22}{f(row['goodput_rps'], '.2f'):>12}{f(row['ttft_p90_at_top'], '.2f'):>14}"
              f"{f(row['slo_attainment_at_top'], '.2f'):>9}{f(row['prefix_hit_rate_at_top'], '.3f'):>9}")
    for k, v in result["ratios"].items():
        print(f"  {k}: {v}")


def plots(runs: list[dict[str, Any]], variants: list[Variant], out_prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.latency import ttft_cdf_plot

    top = max(r["level"] for r in runs)
    cdf = {r["label"]: r["ttft"] for r in runs if r["level"] == top}
    paths = [str(ttft_cdf_plot(cdf, out_prefix + "-ttft-cdf.png", f"TTFT CDF at the highest load ({top})"))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in variants:
        rows = sorted((r for r in runs if r["label"] == v.label), key=lambda r: r["offered_rps"])
        ax.plot([r["offered_rps"] for r in rows], [r["slo_attainment"] for r in rows], marker="o", label=v.label)
    ax.axhline(GOODPUT_ATTAINMENT, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("fraction of requests meeting both SLOs")
    ax.set_title("SLO attainment as the rate rises (goodput: last point above the line)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_prefix + "-goodput.png", dpi=110)
    plt.close(fig)
    paths.append(out_prefix + "-goodput.png")
    return paths


# What must match for runs of another result file to sit in one table with this run's.
WORKLOAD_KEYS = ("mode", "trace", "content", "duration", "start", "slo_ttft", "slo_tpot", "replicas", "sim_profile",
                 "host_kv_memory", "decode_step_tokens", "gateways", "spread_ties", "tokenizer", "seed")


def added_runs(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """Runs stored by earlier ``foresight bench routing`` results (``--add-results``), for one table and one goodput
    sweep with this run's (e.g. a sweep extended by higher rates), and their sources. Read before anything runs, so
    that another workload is refused at once."""
    import json

    from bench import results

    out, sources = [], []
    for path in getattr(args, "add_results", None) or []:
        data = json.loads(Path(path).read_text())
        config = data.get("config", {})
        differ = [k for k in WORKLOAD_KEYS if k in config and config.get(k) != getattr(args, k, None)]
        if differ:
            raise ValueError(f"--add-results {path}: another workload ({', '.join(differ)} differ)")
        out.extend(data.get("runs", []))
        sources.append(results.relative(path))
    return out, sources


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench import results, traces
    from bench.replay import build_workload

    variants = parse_variants(args.policies, args.external or [])
    runs: list[dict[str, Any]] = []
    synth = None
    if args.mode == "live" or args.content:
        # Live: builds the prompts; both modes: measures real prompts and responses of --content in tokens.
        from bench.prompts import PromptSynth, resolve_tokenizer_dir

        synth = PromptSynth(resolve_tokenizer_dir(args.tokenizer))
    from replicas.runners.cost_model import profile

    cost = profile(args.sim_profile)
    # The ideal-LRU bound of the fleet's whole prefix cache: device KV plus the host tier when there is one.
    fleet_kv = args.replicas * (cost.kv_capacity_tokens() + cost.kv_blocks_in(args.host_kv_memory, 1))
    def record(kind: str, value: float, v: Variant, ceiling: float | None, bound: float | None,
               summary: dict[str, Any], ttft: list[float]) -> None:
        runs.append({"label": v.label, "policy": v.policy, "options": v.options, "harness": v.harness,
                     "level_kind": kind, "level": value, **summary, "prefix_ceiling": ceiling,
                     # Each TTFT to the millisecond: the CDF needs no more, and whole-trace runs stay small.
                     "fleet_lru_bound": bound, "ttft": [round(t, 3) for t in ttft]})
        print(f"[{kind}={value}] {v.label}: offered {summary['offered_rps']:.2f} rps, "
              f"p90 TTFT {summary['ttft_p90'] if summary['ttft_p90'] is not None else float('nan'):.2f}s, "
              f"SLO {summary['slo_attainment']:.3f}, hit {summary.get('prefix_hit_rate')}", flush=True)

    stored, sources = added_runs(args)
    config = {k: v for k, v in vars(args).items() if k != "func"}  # the JSON's record, and picklable for the pool
    with contextlib.ExitStack() as stack:
        pool = None
        if args.mode == "sim":
            from bench.routing_sim import run_sim

            sim_args = argparse.Namespace(**config)
            if args.jobs > 1:
                # DES runs keep virtual time: running them side by side changes nothing but the wall clock.
                pool = stack.enter_context(ProcessPoolExecutor(args.jobs,
                                                               mp_context=multiprocessing.get_context("fork")))
        pending = []
        for kind, value in levels(args):
            ns = argparse.Namespace(**{**vars(args), "speedup": value if kind == "speedup" else None,
                                       "rate": value if kind == "rate" else None})
            reqs = build_workload(ns, synth)
            ceiling = traces.prefix_ceiling(reqs)
            bound = traces.lru_bound(reqs, fleet_kv) if ceiling else None
            for v in variants:
                if pool is not None:
                    pending.append((kind, value, v, ceiling, bound, pool.submit(run_sim, sim_args, v, reqs)))
                elif args.mode == "sim":
                    record(kind, value, v, ceiling, bound, *run_sim(sim_args, v, reqs))
                else:
                    from bench.routing_live import run_live

                    record(kind, value, v, ceiling, bound, *run_live(args, v, reqs, synth))
        for kind, value, v, ceiling, bound, future in pending:
            record(kind, value, v, ceiling, bound, *future.result())
    for r in stored:  # stored variants that this run did not measure join the table
        if all(v.label != r["label"] for v in variants):
            variants.append(Variant(r["label"], r["policy"], r.get("options", {}), r.get("harness", {})))
    runs = stored + runs
    result = report(runs, variants)
    print_table(result)
    out = results.output_path(args.json, args.name or f"routing-{args.mode}")
    result["plots"] = [results.relative(p) for p in plots(runs, variants, str(out.with_suffix("")))] if runs else []
    if sources:
        config["added_from"] = sources
    results.write_json(out, {"config": config, **result, "runs": runs})
    return result


def register(subparsers: argparse._SubParsersAction) -> None:
    from bench.replay import add_workload_args
    from foresight.units import byte_size

    p = subparsers.add_parser("routing", help="compare routing policies on one workload at rising rates")
    add_workload_args(p)
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--sim-profile", default="h100-llama8b")
    p.add_argument("--policies", default="round_robin,least_load,prefix,foresight")
    p.add_argument("--external", action="append", default=[], help="NAME=COMMAND ({port}, {replicas})")
    p.add_argument("--mode", choices=("live", "sim"), default="live")
    p.add_argument("--speedups", default=None, help="comma-separated speedups (the goodput sweep)")
    p.add_argument("--rates", default=None, help="comma-separated mean rates in req/s (the goodput sweep)")
    p.add_argument("--gateways", type=int, default=1, help="gateways sharing state (live: through Redis)")
    p.add_argument("--gateway-args", default="", help="live: extra gateway flags, e.g. '--shed-queue-delay 0' to "
                   "compare routing without the gateway's load shedding")
    p.add_argument("--model", default="tiny", help="live: replica --model (its tokenizer builds the prompts)")
    p.add_argument("--sim-block-size", type=int, default=16, help="sim: KV block size of the simulated replicas")
    p.add_argument("--host-kv-memory", type=byte_size, default=0,
                   help="host-tier KV memory per replica (e.g. 200G; replica --host-kv-memory); default 0: none")
    p.add_argument("--jobs", type=int, default=1, help="sim: DES runs side by side (processes; one per core)")
    p.add_argument("--add-results", action="append", default=[], metavar="JSON",
                   help="runs of an earlier result of the same workload join this one's table and goodput sweep "
                        "(repeatable; without levels, only a report of the stored runs is written)")
    p.add_argument("--decode-step-tokens", type=int, default=None,
                   help="replica --decode-step-tokens (step budget while requests decode); default: the replica's")
    p.add_argument("--name", default=None, help="results file stem under bench/results/")
    p.add_argument("--json", default=None, help="results JSON (default bench/results/NAME.json); plots beside it")
    p.set_defaults(func=lambda a: (run(a), 0)[1])
