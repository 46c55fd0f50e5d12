"""What each Foresight dashboard shows: panels as (title, PromQL targets, unit), rendered by generate.py.

Every expression must return data from a live cluster: tests/observability evaluates each one against a real
Prometheus scraping a real gateway and real replicas. Metric names are the ones gateway/metrics.py and
replicas/metrics.py export (DESIGN.md section 7); ``$__rate_interval`` is Grafana's rate window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RI = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (PromQL, legend format)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    wide: bool = False
    min: float | None = 0
    max: float | None = None
    tags: list[str] = field(default_factory=list)


def quantiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    """p50/p90/p99 of a Prometheus histogram, summed over instances (and optionally split by a label)."""
    group = f"le, {by}" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RI}])))", f"{prefix}p{int(q * 100)}")
            for q in (0.5, 0.9, 0.99)]


OVERVIEW = [
    Panel("Requests per second", [(f"sum by (route) (rate(foresight_gateway_requests_total[{RI}]))", "{{route}}")],
          unit="reqps", description="Requests answered by all gateways, by route."),
    Panel("Responses by status", [(f"sum by (status) (rate(foresight_gateway_requests_total[{RI}]))", "{{status}}")],
          unit="reqps", description="Every answer by HTTP status; 4xx are client errors, 5xx gateway/upstream."),
    Panel("Error share (non-2xx)",
          [(f'sum(rate(foresight_gateway_requests_total{{status!~"2.."}}[{RI}])) '
            f"/ sum(rate(foresight_gateway_requests_total[{RI}]))", "errors")],
          unit="percentunit", kind="stat", max=1),
    Panel("Requests in flight", [("sum(foresight_gateway_inflight_requests)", "in flight")], kind="stat"),
    Panel("Time to first token", quantiles("foresight_gateway_ttft_seconds"), unit="s",
          description="Gateway-measured time from request to the first byte of the response body."),
    Panel("End-to-end latency", quantiles("foresight_gateway_e2e_seconds"), unit="s"),
    Panel("Inter-token latency (streams)", quantiles("foresight_gateway_itl_seconds"), unit="s",
          description="Time between streamed chunks."),
    Panel("Tokens per second",
          [(f"sum(rate(foresight_gateway_prompt_tokens_total[{RI}]))", "prompt"),
           (f"sum(rate(foresight_gateway_completion_tokens_total[{RI}]))", "completion")],
          unit="short", description="Token throughput reported by the replicas' usage blocks."),
]

DASHBOARDS: dict[str, tuple[str, str, list[Panel]]] = {
    "foresight-overview": ("Foresight / Overview", "Traffic, errors and latency percentiles at the gateways.",
                           OVERVIEW),
}
