"""How many remote commands an apply and a rollback send to a host over the pyinfra session
(`Session.commands`: one per command or upload), pinned so a refactoring of apply.py cannot add round trips unnoticed.
Real host over real SSH; recon runs in a subprocess (its transport gevent-patches the process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hosttools import REPO, Mini

from testhosts import TestHost

COUNT_SCRIPT = """
import json, sys
from reconciler import runner, transport
counts = []
close = transport.Session.close
def counting_close(self):
    counts.append(dict(self.commands))
    close(self)
transport.Session.close = counting_close
class UI:
    def show_plan(self, plan): pass
    def confirm(self): pass
    def on_event(self, event): pass
files, state, what = (sys.argv[1],), sys.argv[2], sys.argv[3]
if what == "apply":
    res = runner.run_apply(runner.ApplyRequest(files=files, auto_approve=True, state=state), UI())
    results = [str(o.result) for o in res.applied.outcomes] if res.applied else []
else:
    res = runner.run_rollback(runner.RollbackRequest(files=files, service=sys.argv[4], state=state), UI().on_event)
    results = [str(o.result) for o in res.applied.outcomes] if res.applied else []
print(json.dumps({"commands": counts[-1], "results": results}))
"""


def _count(m: Mini, *what: str) -> tuple[int, list[str]]:
    spec = m.write()
    res = subprocess.run([sys.executable, "-c", COUNT_SCRIPT, str(spec), str(m.dir / "state"), *what], cwd=REPO,
                         capture_output=True, text=True, timeout=240,
                         env={"VAULT_TOKEN": "t0ken", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    return out["commands"]["node1"], out["results"]


def test_remote_commands_of_apply_update_failure_and_rollbacks(testhost: TestHost, tmp_path: Path,
                                                               artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    counts: dict[str, tuple[int, list[str]]] = {}
    counts["fresh"] = _count(m, "apply")
    m.config_extra = {n: {"extra": {"k": 1}} for n in m.versions}
    counts["update"] = _count(m, "apply")                      # update, reload, update
    m.versions["orchestrator"] = "5.0.1"
    counts["replace"] = _count(m, "apply")
    m.versions["control-center"] = "5.0.2-unhealthy"
    counts["failed"] = _count(m, "apply")                      # rolled back automatically
    m.versions["control-center"] = "5.0.0"
    counts["rollback"] = _count(m, "rollback", "orchestrator")   # back to 5.0.0
    counts["undo"] = _count(m, "rollback", "mcp-server")         # the in-place config change undone
    assert counts == {
        # three waves: upload, place, start each (reconciler.operations); the observation goes over OpenSSH
        "fresh": (9, ["created", "created", "created"]),
        "update": (9, ["updated", "reloaded", "updated"]),
        "replace": (3, ["replaced"]),
        "failed": (9, ["rolled-back"]),     # 3, then the rollback: switch, bounce, 4 read-backs
        "rollback": (6, ["replaced"]),
        "undo": (7, ["replaced"]),
    }
