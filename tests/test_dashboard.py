"""`recon dashboard`: a Grafana dashboard from the spec, checked against the shape of Grafana's dashboard
JSON model (the fields Grafana's importer requires, panel grid geometry, row layout, targets), as a
user gets it from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

REPO = Path(__file__).resolve().parents[1]
RECON = str(Path(sys.executable).with_name("recon"))

# Grafana's dashboard JSON model (Grafana docs, "JSON model" of a dashboard):
# the top-level fields, a panel's id/type/title/gridPos (24 columns), a target's refId and expr.
GRID = {"type": "object", "required": ["h", "w", "x", "y"],
        "properties": {"h": {"type": "integer", "minimum": 1}, "w": {"type": "integer", "minimum": 1, "maximum": 24},
                       "x": {"type": "integer", "minimum": 0, "maximum": 23}, "y": {"type": "integer", "minimum": 0}}}
MODEL = {
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "version", "time", "panels", "templating", "tags"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "time": {"type": "object", "required": ["from", "to"]},
        "templating": {"type": "object", "required": ["list"], "properties": {"list": {"type": "array", "items": {
            "type": "object", "required": ["name", "type"]}}}},
        "panels": {"type": "array", "items": {
            "type": "object", "required": ["id", "type", "title", "gridPos"],
            "properties": {
                "id": {"type": "integer"}, "type": {"enum": ["row", "timeseries", "stat", "gauge", "table"]},
                "gridPos": GRID,
                "targets": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["refId", "expr"]}},
            },
            "if": {"properties": {"type": {"const": "timeseries"}}},
            "then": {"required": ["targets", "datasource"]},
        }},
    },
}


def test_dashboard_has_grafanas_shape_and_a_row_per_service() -> None:
    res = subprocess.run([RECON, "dashboard", "-f", "specs/platform.yaml"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, MODEL)
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels)               # ids are unique
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["orchestrator", "vault-service", "control-center", "control-center-ui", "mcp-server",
                    "ai-service", "extension-registry", "api-gateway", "provisioning-daemon"]
    service = None
    for p in panels:                                                    # each row's panels query its service
        if p["type"] == "row":
            service = p["title"]
            continue
        assert all(f'service="{service}"' in t["expr"] for t in p["targets"]), p
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
    boxes = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
    assert len(set(boxes)) == len(boxes)                                # no two panels in one place
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for series in ("provisioning_up", "provisioning_http_requests_total", "recon_systemd_memory_bytes",
                   "recon_systemd_cpu_seconds_total", "recon_systemd_restarts_total"):
        assert series in exprs
    assert {v["name"] for v in doc["templating"]["list"]} == {"datasource", "host"}
