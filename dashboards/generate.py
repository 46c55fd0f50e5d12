"""Writes the Grafana dashboards of this folder from the compact panel lists in ``panels.py``.

    python dashboards/generate.py          # rewrite dashboards/*.json
    python dashboards/generate.py --check  # exit 1 when a committed JSON differs from what would be written

Every panel queries the provisioned Prometheus datasource by uid (deploy/grafana/provisioning/datasources);
the layout is a grid of two panels per row. Grafana's ``$__rate_interval`` is the only variable in the queries,
so each expression can be evaluated as it is (with that variable substituted) against any Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from panels import DASHBOARDS, Panel  # noqa: E402

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "foresight-prometheus"}
LINKS = [{"title": "Foresight", "type": "dashboards", "tags": ["foresight"], "asDropdown": True,
          "includeVars": False, "keepTime": True, "targetBlank": False}]


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    width = 24 if panel.wide else 12
    height = 5 if panel.kind == "stat" else 8
    targets = [{"datasource": DATASOURCE, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                "range": True, "instant": False} for i, (expr, legend) in enumerate(panel.targets)]
    out: dict[str, Any] = {
        "id": panel_id, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": height, "w": width, "x": x, "y": y}, "targets": targets,
        "fieldConfig": {"defaults": {"unit": panel.unit, "min": panel.min}, "overrides": []},
    }
    if panel.kind == "timeseries":
        out["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                    "showPoints": "never", "spanNulls": True}
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
    else:
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    if panel.max is not None:
        out["fieldConfig"]["defaults"]["max"] = panel.max
    return out


def dashboard_json(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    laid_out: list[dict[str, Any]] = []
    x = y = 0
    row_height = 0
    for i, panel in enumerate(panels, start=1):
        width = 24 if panel.wide else 12
        if x + width > 24:
            x, y, row_height = 0, y + row_height, 0
        body = panel_json(panel, i, x, y)
        laid_out.append(body)
        row_height = max(row_height, body["gridPos"]["h"])
        x += width
    return {
        "uid": uid, "title": title, "description": description, "tags": ["foresight"],
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": False, "graphTooltip": 1,
        "timezone": "browser", "refresh": "10s", "time": {"from": "now-30m", "to": "now"},
        "timepicker": {}, "templating": {"list": []}, "links": LINKS,
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "name": "Annotations & Alerts", "type": "dashboard"}]},
        "panels": laid_out,
    }


def render_all() -> dict[Path, str]:
    out: dict[Path, str] = {}
    for uid, (title, description, panels) in DASHBOARDS.items():
        body = dashboard_json(uid, title, description, panels)
        out[HERE / f"{uid}.json"] = json.dumps(body, indent=2) + "\n"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for path, text in render_all().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python dashboards/generate.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
