"""Crash safety: `kill -9` of `recon apply` at 20 points of an apply, each followed by an apply that
converges, with a state file that always parses and no release lost (real host over SSH)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hosttools import CANARY, NAMES, Mini, _exec, health

from reconciler.state import StateStore
from testhosts import TestHost

POINTS = 20


def _start_apply(m: Mini) -> subprocess.Popen[str]:
    spec = m.write()
    env = {**os.environ, "VAULT_TOKEN": CANARY, "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "reconciler", "apply", "-f", str(spec), "--state",
                             str(m.dir / "state"), "--auto-approve"], cwd=m.dir, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _toggle(m: Mini, i: int) -> None:
    v = "5.0.1" if i % 2 == 0 else "5.0.0"
    m.versions["orchestrator"] = v
    m.versions["control-center"] = v
    m.config_extra["mcp-server"] = {"tuning": {"round": i}}


def test_kill_9_at_twenty_points_then_apply_converges(testhost: TestHost, tmp_path: Path, artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    # how long does an apply with work to do take, from process start?
    _toggle(m, 0)
    t0 = time.monotonic()
    m.apply()
    duration = time.monotonic() - t0
    store = StateStore(tmp_path / "state")
    killed_at: list[float] = []
    for i in range(1, POINTS + 1):
        _toggle(m, i)
        delay = 0.2 + (duration - 0.2) * (i - 1) / (POINTS - 1)
        proc = _start_apply(m)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at.append(delay)
        proc.wait()
        state = store.load()          # always parses (atomic writes)
        assert state.lineage
        res = m.apply(check=None)
        assert res.returncode == 0, f"point {i} ({delay:.2f}s): converging apply failed\n{res.stdout}\n{res.stderr}"
        m.run("plan", "--detailed-exitcode", check=0)
        want = m.versions
        for name, port in (("orchestrator", 8080), ("control-center", 8081)):
            assert health(testhost, port)["version"] == want[name]
        releases = _exec(testhost, "ls /opt/provisioning/orchestrator/releases").split()
        assert {"5.0.0", "5.0.1"} <= set(releases), f"point {i}: a release was lost: {releases}"
        assert health(testhost, 8083, "/config")["tuning"]["round"] == i
        recorded = store.load()
        for name in NAMES:
            rec = recorded.record("node1", name)
            assert rec is not None and rec.status == "applied" and rec.version == want[name]
    assert len(killed_at) >= 15, f"only {len(killed_at)} applies were still running when killed"
