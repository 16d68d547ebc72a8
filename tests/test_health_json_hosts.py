"""`health.expect_json` on a real host over SSH: a release whose health answers 200 with
`"database": "disconnected"` fails its gate and is rolled back automatically (the history says why);
plan and status show a service whose answer lacks the expected fields as unhealthy, with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hosttools import NAMES, Mini, _exec, health, pids, recon

from reconciler.state import StateStore
from testhosts import TestHost

WHY = 'database: expected "connected", found "disconnected"'


def test_expect_json_fails_the_gate_and_rolls_back(testhost: TestHost, tmp_path: Path, artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.health_timeout = 3
    base = m.doc

    def doc(expect: dict[str, Any]) -> dict[str, Any]:
        d = base()
        d["defaults"]["health"]["expect_json"] = expect
        return d

    m.doc = lambda: doc({"database": "connected"})               # type: ignore[method-assign]
    m.apply()
    m.run("plan", "--detailed-exitcode", check=0)                 # converged: every answer carries the field
    before = pids(testhost, NAMES)

    # a new release of control-center whose health answers 200 but "database": "disconnected"
    m.versions["control-center"] = "5.0.1"
    m.config_extra["control-center"] = {"standin": {"database": "disconnected"}}
    res = m.apply(check=1)
    assert f"waiting for health: HTTP 200, {WHY}" in res.stdout, res.stdout
    assert "rolled back" in res.stdout and WHY in res.stdout, res.stdout
    answer = health(testhost, 8081)
    assert (answer["version"], answer["database"]) == ("5.0.0", "connected")
    assert _exec(testhost, "readlink /opt/provisioning/control-center/current").strip() == "releases/5.0.0"
    after = pids(testhost, NAMES)
    assert after["orchestrator"] == before["orchestrator"] and after["mcp-server"] == before["mcp-server"]
    st = StateStore(tmp_path / "state")
    rec = st.load().record("node1", "control-center")
    assert rec is not None and rec.status == "rolled-back" and rec.version == "5.0.0"
    failed = [e for e in st.history() if e["service"] == "control-center" and e["result"] == "rolled-back"]
    assert failed and WHY in failed[-1]["detail"], st.history()
    hist = recon("history", "control-center", "--state", str(tmp_path / "state"), cwd=tmp_path, check=0).stdout
    assert "rolled-back" in hist and WHY in hist, hist

    # the spec now asks for a field value no running service reports: plan and status say which and why
    m.versions["control-center"] = "5.0.0"
    m.config_extra.clear()
    m.doc = lambda: doc({"database": "connected", "queued_tasks": 99})   # type: ignore[method-assign]
    plan = json.loads(m.run("plan", "--format", "json", check=0).stdout)
    fields = {(c["service"], f["path"]): f for c in plan["changes"] for f in c["fields"]}
    f = fields[("orchestrator", "health")]
    assert f["before"] == "HTTP 200, queued_tasks: expected 99, found 0", f
    assert f["after"] == 'HTTP 200 with database="connected", queued_tasks=99', f
    status = m.run("status", "--format", "json", check=1)
    rows = {r["service"]: r for r in json.loads(status.stdout)["services"]}
    orch = rows["orchestrator"]
    assert not orch["healthy"] and "queued_tasks: expected 99, found 0" in orch["health"], orch
    text = m.run("status", check=1).stdout
    assert "queued_tasks: expected 99, found 0" in text, text
