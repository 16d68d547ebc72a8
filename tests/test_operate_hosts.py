"""`recon stop|start|restart` on a real host over SSH: dependents stopped first (and asked for), the drift a
stop leaves (who, when, why) and apply starting it again, dependencies started first, a restart that
leaves dependents running; locked and in the history. Checked through MainPIDs and systemd's timestamps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hosttools import NAMES, Mini, pids, recon, show

from reconciler.operate import Op, order
from reconciler.spec import load_spec
from testhosts import TestHost


def test_order_puts_dependents_or_dependencies_first(tmp_path: Path, artifacts: Any) -> None:
    m = Mini(tmp_path, [], artifacts)
    doc = m.doc()
    doc["hosts"] = {"node1": {"address": "127.0.0.1"}}
    (tmp_path / "s.yaml").write_text(json.dumps(doc))
    spec = load_spec([str(tmp_path / "s.yaml")])
    assert order(spec, ["control-center"], Op.STOP) == (["mcp-server", "control-center"], ["mcp-server"])
    assert order(spec, ["mcp-server"], Op.START) == (["orchestrator", "control-center", "mcp-server"],
                                                     ["orchestrator", "control-center"])
    assert order(spec, ["mcp-server", "orchestrator"], Op.RESTART) == (["orchestrator", "mcp-server"], [])


def active_since(host: TestHost, name: str, prop: str) -> int:
    return int(show(host, f"provisioning-{name}.service", prop)[prop])


def test_stop_start_restart(testhost: TestHost, tmp_path: Path, artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    before = pids(testhost, NAMES)

    res = m.run("stop", "control-center", check=1)                  # it would stop a dependent too: ask
    assert "also stops its dependents: mcp-server: pass --yes" in res.stderr
    assert pids(testhost, NAMES) == before

    res = m.run("stop", "control-center", "--yes", "--reason", "disk swap", check=0)
    assert "Stop: 2 of 2 done (mcp-server, control-center)." in res.stdout, res.stdout
    assert show(testhost, "provisioning-control-center.service", "ActiveState")["ActiveState"] == "inactive"
    assert (active_since(testhost, "mcp-server", "InactiveEnterTimestampMonotonic")
            < active_since(testhost, "control-center", "InactiveEnterTimestampMonotonic"))
    assert pids(testhost, ["orchestrator"]) == {"orchestrator": before["orchestrator"]}

    plan = json.loads(m.run("plan", "--format", "json", check=0).stdout)
    cc = next(c for c in plan["changes"] if c["service"] == "control-center")
    (state,) = [f for f in cc["fields"] if f["path"] == "state"]
    assert state["kind"] == "drift" and "stopped by recon stop: " in state["before"]
    assert "'disk swap'" in state["before"]
    hist = recon("history", "control-center", "--state", str(tmp_path / "state"), cwd=tmp_path, check=0).stdout
    assert "stop" in hist and "stopped" in hist and "reason: disk swap" in hist

    res = m.run("start", "mcp-server", "--yes", check=0)             # its dependencies come up first
    assert "Start: 3 of 3 done (orchestrator, control-center, mcp-server)." in res.stdout, res.stdout
    assert pids(testhost, ["orchestrator"]) == {"orchestrator": before["orchestrator"]}   # running: left as it is
    assert (active_since(testhost, "control-center", "ActiveEnterTimestampMonotonic")
            < active_since(testhost, "mcp-server", "ActiveEnterTimestampMonotonic"))
    m.run("plan", "--detailed-exitcode", check=0)                     # started again: nothing left to do

    running = pids(testhost, NAMES)
    res = m.run("restart", "orchestrator", "--reason", "new certificate", check=0)
    assert "node1/orchestrator: restarted, healthy" in res.stdout
    after = pids(testhost, NAMES)
    assert after["orchestrator"] != running["orchestrator"]
    assert after["control-center"] == running["control-center"] and after["mcp-server"] == running["mcp-server"]

    m.run("stop", "mcp-server", check=0)                              # apply starts a stopped service again
    m.apply()
    assert show(testhost, "provisioning-mcp-server.service", "ActiveState")["ActiveState"] == "active"
    m.run("plan", "--detailed-exitcode", check=0)
    assert m.run("stop", check=1).stderr.count("name the services") == 1
