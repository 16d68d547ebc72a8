"""Round trips of a fresh apply, per host and wave, on a real host over real SSH: each wave stages all its
services' files in one upload, places and switches them in one command and starts them in one more
(`reconciler.operations`), so at most 3 round trips per host per wave, and a converged apply opens no pyinfra
session at all. Recon runs in a subprocess (its transport gevent-patches the process) with `Session.put`,
`run` and `stream` logged in order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hosttools import REPO, Mini

from testhosts import TestHost

LOG_SCRIPT = """
import json, sys
from reconciler import runner
calls = []
def logged(name):
    from reconciler import transport
    real = getattr(transport.Session, name)
    def call(self, host, *a, **kw):
        calls.append([host, name])
        return real(self, host, *a, **kw)
    setattr(transport.Session, name, call)
from reconciler import transport
for n in ("put", "run", "stream"):
    logged(n)
opened = []
real_open = transport.Session.open
def logged_open(self):
    opened.append(sorted(self.hosts))
    return real_open(self)
transport.Session.open = logged_open
class UI:
    def show_plan(self, plan): pass
    def confirm(self): pass
    def on_event(self, event): pass
res = runner.run_apply(runner.ApplyRequest(files=(sys.argv[1],), auto_approve=True, state=sys.argv[2]), UI())
print(json.dumps({"calls": calls, "results": [str(o.result) for o in res.applied.outcomes] if res.applied else [],
                  "sessions": opened}))
"""


class TwoWaves(Mini):
    """orchestrator, then control-center and mcp-server together in the second wave."""

    def doc(self) -> dict[str, Any]:
        doc = super().doc()
        doc["services"]["mcp-server"]["depends_on"] = ["orchestrator"]
        return doc


def _apply(m: Mini) -> dict[str, Any]:
    spec = m.write()
    res = subprocess.run([sys.executable, "-c", LOG_SCRIPT, str(spec), m.state], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={"VAULT_TOKEN": "t0ken", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def test_a_fresh_apply_takes_three_round_trips_per_host_and_wave(testhost: TestHost, tmp_path: Path,
                                                                  artifacts: Any) -> None:
    m = TwoWaves(tmp_path, [testhost], artifacts)
    out = _apply(m)
    assert out["results"] == ["created", "created", "created"] and out["sessions"] == [["node1"]], out
    # wave 1 (orchestrator), wave 2 (control-center + mcp-server staged together): upload, place, start each
    assert out["calls"] == [["node1", "put"], ["node1", "run"], ["node1", "stream"]] * 2, out["calls"]
    again = _apply(m)                       # converged: observed over OpenSSH, no pyinfra session opened
    assert again["calls"] == [] and again["results"] == [] and again["sessions"] == [], again
    m.versions["control-center"] = "5.0.1"
    bump = _apply(m)
    assert bump["results"] == ["replaced"] and bump["calls"] == [["node1", "put"], ["node1", "run"],
                                                                  ["node1", "stream"]], bump
