"""`run: stopped` (deployed, not started: the platform's "Planned" services) and `stop.timeout_s`, on a real
host over SSH: installed but down and disabled, converged, a hand start undone, and a later `run: running`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from hosttools import Mini, _exec, recon, show

from testhosts import TestHost

MCP = "provisioning-mcp-server.service"


def test_run_stopped_and_stop_timeout(testhost: TestHost, tmp_path: Path, artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    doc = m.doc()
    doc["services"]["mcp-server"]["run"] = "stopped"
    doc["services"]["orchestrator"]["stop"] = {"timeout_s": 45}
    spec = tmp_path / "stopped.yaml"

    def run(*args: str, check: int | None = 0) -> Any:
        spec.write_text(yaml.safe_dump(doc, sort_keys=False))
        return recon(*args, "-f", str(spec), "--state", str(tmp_path / "state"), cwd=tmp_path, check=check)

    plan = json.loads(run("plan", "--format", "json").stdout)
    mcp = next(c for c in plan["changes"] if c["service"] == "mcp-server")
    assert (mcp["action"], mcp["effect"]) == ("create", "none") and "not started" in mcp["reason"]
    res = run("apply", "--auto-approve")
    assert "node1/mcp-server: created 5.0.0, healthy (not started (run: stopped))" in res.stdout, res.stdout
    props = show(testhost, MCP, "ActiveState", "UnitFileState", "LoadState")
    assert props == {"ActiveState": "inactive", "UnitFileState": "disabled", "LoadState": "loaded"}
    assert "TimeoutStopSec=45s" in _exec(testhost, "cat /etc/systemd/system/provisioning-orchestrator.service")
    assert show(testhost, "provisioning-orchestrator.service", "TimeoutStopUSec")["TimeoutStopUSec"] == "45s"
    run("plan", "--detailed-exitcode")                                         # converged while down
    status = json.loads(run("status", "--format", "json").stdout)              # a stopped service is fine
    assert all(r["healthy"] for r in status["services"])

    _exec(testhost, f"systemctl start {MCP}")                                  # started by hand: undone
    plan = json.loads(run("plan", "--format", "json", "--detailed-exitcode", check=2).stdout)
    (c,) = plan["changes"]
    assert (c["service"], c["action"], c["effect"]) == ("mcp-server", "update", "stop")
    run("apply", "--auto-approve")
    assert show(testhost, MCP, "ActiveState")["ActiveState"] == "inactive"
    run("plan", "--detailed-exitcode")

    doc["services"]["mcp-server"]["run"] = "running"                           # a planned change like any other
    (c,) = json.loads(run("plan", "--format", "json").stdout)["changes"]
    assert (c["service"], c["effect"]) == ("mcp-server", "restart")
    run("apply", "--auto-approve")
    assert show(testhost, MCP, "ActiveState", "UnitFileState") == {"ActiveState": "active",
                                                                    "UnitFileState": "enabled"}
    run("plan", "--detailed-exitcode")
