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

PREDICTED_VS_ACTUAL = Panel(
    "Predicted vs actual output length (mean tokens)",
    [(f"sum by (model) (rate(foresight_gateway_predicted_output_tokens_sum[{RI}])) "
      f"/ sum by (model) (rate(foresight_gateway_predicted_output_tokens_count[{RI}]))", "predicted p50 {{model}}"),
     (f"sum by (model) (rate(foresight_gateway_actual_output_tokens_sum[{RI}])) "
      f"/ sum by (model) (rate(foresight_gateway_actual_output_tokens_count[{RI}]))", "actual {{model}}")],
    description="The predictor's p50 that routing accounted for, against the completion tokens the replica reported.")

ROUTING = [
    Panel("Routing decisions by policy",
          [(f"sum by (policy) (rate(foresight_gateway_routing_decisions_total[{RI}]))", "{{policy}}")],
          unit="ops", description="Dispatches chosen by each policy (a retried request counts once per dispatch)."),
    Panel("Routing decisions by replica",
          [(f"sum by (replica) (rate(foresight_gateway_routing_decisions_total[{RI}]))", "{{replica}}")],
          unit="ops", description="How evenly the policy spreads work; prefix affinity makes this uneven on purpose."),
    Panel("Prefix cache hit rate",
          [(f"sum(rate(foresight_replica_prefix_hit_tokens_total[{RI}])) "
            f"/ sum(rate(foresight_replica_prompt_tokens_total[{RI}]))", "all replicas"),
           (f"sum by (instance) (rate(foresight_replica_prefix_hit_tokens_total[{RI}])) "
            f"/ sum by (instance) (rate(foresight_replica_prompt_tokens_total[{RI}]))", "{{instance}}")],
          unit="percentunit", max=1,
          description="Share of prompt tokens the replicas served from their prefix cache: what affinity routing buys."),
    Panel("Dispatches per request",
          [(f"sum(rate(foresight_gateway_routing_decisions_total[{RI}])) "
            f'/ sum(rate(foresight_gateway_requests_total{{replica!="none"}}[{RI}]))', "dispatches / request")],
          unit="short", kind="stat", description="1 means no retries; above 1, requests were retried elsewhere."),
    Panel("Retries by reason", [(f"sum by (reason) (rate(foresight_gateway_retries_total[{RI}]))", "{{reason}}")],
          unit="ops", description="Dispatches retried on another replica after a failure before the first byte."),
    PREDICTED_VS_ACTUAL,
    Panel("Rejected before dispatch", [(f"sum by (reason) (rate(foresight_gateway_rejected_total[{RI}]))",
                                        "{{reason}}")],
          unit="reqps", description="Shed (503) and rate-limited (429) requests, by reason."),
]

PREDICTOR = [
    PREDICTED_VS_ACTUAL,
    Panel("Mean absolute error (tokens)",
          [(f"sum by (model) (rate(foresight_gateway_prediction_error_tokens_sum[{RI}])) "
            f"/ sum by (model) (rate(foresight_gateway_prediction_error_tokens_count[{RI}]))", "{{model}}")],
          description="|predicted p50 - actual output tokens| of completed requests."),
    Panel("Absolute error percentiles", quantiles("foresight_gateway_prediction_error_tokens"), unit="short"),
    Panel("p90 coverage",
          [(f"sum(rate(foresight_gateway_prediction_p90_covered_total[{RI}])) "
            f"/ sum(rate(foresight_gateway_predictor_observations_total[{RI}]))", "share under p90")],
          unit="percentunit", kind="stat", max=1,
          description="Share of completions whose true length was at most the predicted p90 (calibrated: about 0.9)."),
    Panel("Online updates (completions fed back)",
          [(f"sum by (model) (rate(foresight_gateway_predictor_observations_total[{RI}]))", "{{model}}")],
          unit="ops", description="True output lengths the gateway reports to the predictor's online learner."),
    Panel("Actual output length percentiles", quantiles("foresight_gateway_actual_output_tokens"), unit="short"),
]

REPLICAS = [
    Panel("Replica up (Prometheus scrape)", [('up{job="foresight-replica"}', "{{instance}}")], max=1,
          description="1 while Prometheus can scrape the replica."),
    Panel("Breaker state (replicas per state, all gateways)",
          [("sum by (state) (foresight_gateway_breaker_state)", "{{state}}")],
          description="Each gateway's circuit breaker per replica: closed (healthy), half_open (trial), open."),
    Panel("Waiting requests", [("sum by (instance) (foresight_replica_num_requests_waiting)", "{{instance}}")],
          description="Queued in the replica's scheduler, not yet admitted."),
    Panel("Running requests", [("sum by (instance) (foresight_replica_num_requests_running)", "{{instance}}")]),
    Panel("KV cache in use", [("max by (instance) (foresight_replica_kv_usage_ratio)", "{{instance}}")],
          unit="percentunit", max=1, description="Share of KV blocks referenced by running requests."),
    Panel("KV blocks by state", [("sum by (state) (foresight_replica_kv_blocks)", "{{state}}")],
          description="used: referenced; cached: reusable prefix content (evictable); free: the rest."),
    Panel("Generated tokens per second",
          [(f"sum by (instance) (rate(foresight_replica_generation_tokens_total[{RI}]))", "{{instance}}")]),
    Panel("Prefill tokens per second",
          [(f"sum by (instance) (rate(foresight_replica_prefill_tokens_total[{RI}]))", "{{instance}}")]),
    Panel("Engine step duration", quantiles("foresight_replica_step_duration_seconds"), unit="s"),
    Panel("Replica time to first token", quantiles("foresight_replica_time_to_first_token_seconds"), unit="s",
          description="Arrival at the replica to its first token: queueing plus prefill."),
    Panel("Preemptions", [(f"sum by (instance) (rate(foresight_replica_preemptions_total[{RI}]))", "{{instance}}")],
          unit="ops", description="Requests preempted for lack of KV blocks (their KV is recomputed later)."),
    Panel("Decode step (moving average)", [("max by (instance) (foresight_replica_decode_step_seconds)",
                                            "{{instance}}")], unit="s",
          description="The rate the replicas report to routing (DESIGN.md section 3)."),
]

DASHBOARDS: dict[str, tuple[str, str, list[Panel]]] = {
    "foresight-overview": ("Foresight / Overview", "Traffic, errors and latency percentiles at the gateways.",
                           OVERVIEW),
    "foresight-routing": ("Foresight / Routing", "What the routing policy decides and what it buys.", ROUTING),
    "foresight-replicas": ("Foresight / Replicas", "Queues, KV cache, throughput and health of every replica.",
                           REPLICAS),
    "foresight-predictor": ("Foresight / Predictor", "Output-length prediction error and online learning.",
                            PREDICTOR),
}
