"""The Grafana dashboards are valid and provisioned: schema version, unique panel ids, every datasource reference
resolves to a provisioned datasource, every panel has queries, and the JSON matches its generator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
EXPECTED = {"foresight-overview", "foresight-routing", "foresight-replicas", "foresight-predictor"}


def provisioned_datasources() -> dict[str, str]:
    out: dict[str, str] = {}
    for f in (PROVISIONING / "datasources").glob("*.yml"):
        for ds in yaml.safe_load(f.read_text())["datasources"]:
            out[ds["uid"]] = ds["type"]
    return out


def all_exprs() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) for every query of every panel."""
    out = []
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        for p in d["panels"]:
            for t in p.get("targets", []):
                out.append((d["uid"], p["title"], t["expr"]))
    return out


def test_the_dashboards_exist() -> None:
    assert {p.stem for p in DASHBOARDS} == EXPECTED


def test_generated_json_is_up_to_date() -> None:
    out = subprocess.run([sys.executable, str(REPO / "dashboards" / "generate.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_valid_grafana_json(path: Path) -> None:
    d = json.loads(path.read_text())
    datasources = provisioned_datasources()
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d["uid"] == path.stem and len(d["uid"]) <= 40 and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    assert d["panels"], "a dashboard without panels"
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        assert p["type"] in {"timeseries", "stat", "gauge", "bargauge", "table", "state-timeline"}
        refs = [p["datasource"], *(t["datasource"] for t in p["targets"])]
        for ref in refs:
            assert datasources.get(ref["uid"]) == ref["type"], f"{p['title']}: unresolved datasource {ref}"
        assert p["targets"], f"{p['title']}: no queries"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for t in p["targets"]:
            assert t["expr"].strip() and t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    # No two panels overlap on the grid.
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_provisioning_points_at_the_dashboards_folder() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "foresight.yml").read_text())["providers"]
    assert mounts["./dashboards"] == providers[0]["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "dashboards" / Path(home).name).exists()
    prom = next(d for d in yaml.safe_load((PROVISIONING / "datasources" / "foresight.yml").read_text())["datasources"]
                if d["type"] == "prometheus")
    assert prom["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
