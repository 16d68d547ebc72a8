"""A Grafana dashboard for the platform, generated from the spec: one row per service with the series its
metrics expose (the platform's own and recon's systemd figures, as `recon metrics --format prometheus`
labels them: `host`, `service`), a `host` variable, and the Prometheus data source as a variable. Pure."""

from __future__ import annotations

from typing import Any

from reconciler.spec import Spec

SCHEMA_VERSION = 39      # Grafana 10/11 dashboard JSON model
# (title, PromQL with {svc} for the service, unit) — the platform's series, then systemd's
PANELS = (
    ("Up", 'max by (host) (provisioning_up{{service="{svc}", host=~"$host"}})', "none"),
    ("HTTP requests / s", 'sum by (host, code) (rate(provisioning_http_requests_total{{service="{svc}", '
                          'host=~"$host"}}[$__rate_interval]))', "reqps"),
    ("Workflows", 'sum by (host) (provisioning_workflows_active{{service="{svc}", host=~"$host"}})', "none"),
    ("Tasks queued", 'sum by (host) (provisioning_tasks_queued{{service="{svc}", host=~"$host"}})', "none"),
    ("Memory", 'max by (host) (recon_systemd_memory_bytes{{service="{svc}", host=~"$host"}})', "bytes"),
    ("CPU", 'sum by (host) (rate(recon_systemd_cpu_seconds_total{{service="{svc}", host=~"$host"}}'
            '[$__rate_interval]))', "percentunit"),
    ("Restarts", 'max by (host) (recon_systemd_restarts_total{{service="{svc}", host=~"$host"}})', "none"),
)
WIDTH = 24 // 4          # four panels a line, 24 grid columns
HEIGHT = 6
_DS = {"type": "prometheus", "uid": "${datasource}"}


def dashboard(spec: Spec, title: str = "Provisioning platform") -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for name in spec.services:
        panels.append({"id": next_id, "type": "row", "title": name, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        for i, (panel_title, expr, unit) in enumerate(PANELS):
            x = (i % 4) * WIDTH
            if i and i % 4 == 0:
                y += HEIGHT
            panels.append({
                "id": next_id, "type": "timeseries", "title": f"{name}: {panel_title}", "datasource": _DS,
                "gridPos": {"h": HEIGHT, "w": WIDTH, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"}},
                "targets": [{"refId": "A", "datasource": _DS, "expr": expr.format(svc=name),
                             "legendFormat": "{{host}}"}],
            })
            next_id += 1
        y += HEIGHT
    return {
        "title": title, "uid": "recon-platform", "tags": ["recon", "provisioning"], "editable": True,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s", "timezone": "browser", "annotations": {"list": []}, "links": [],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "host", "type": "query", "datasource": _DS, "label": "Host", "includeAll": True,
             "multi": True, "refresh": 1, "query": "label_values(provisioning_up, host)",
             "current": {"text": "All", "value": "$__all"}, "options": []},
        ]},
        "panels": panels,
    }
