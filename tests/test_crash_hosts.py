"""Crash safety: `kill -9` of `recon apply` at 20 points of an apply, each followed by an apply that
converges, with a state file that always parses and no release lost (real host over SSH). Each test runs on
both state backends: the directory and a real PostgreSQL server (fewer points there, to keep the time)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hosttools import CANARY, NAMES, Mini, _exec, health

from reconciler.state import StateBackend, open_store
from testhosts import TestHost

POINTS = {"dir": 20, "pg": 10}


@pytest.fixture(params=["dir", "pg"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _mini(backend: str, request: pytest.FixtureRequest, tmp_path: Path, host: TestHost, artifacts: Any
          ) -> tuple[Mini, StateBackend]:
    m = Mini(tmp_path, [host], artifacts)
    if backend == "pg":
        m.state = request.getfixturevalue("pg_url")
    return m, open_store(m.state)


def _start_apply(m: Mini) -> subprocess.Popen[str]:
    spec = m.write()
    env = {**os.environ, "VAULT_TOKEN": CANARY, "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "reconciler", "apply", "-f", str(spec), "--state",
                             m.state, "--auto-approve"], cwd=m.dir, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _toggle(m: Mini, i: int) -> None:
    v = "5.0.1" if i % 2 == 0 else "5.0.0"
    m.versions["orchestrator"] = v
    m.versions["control-center"] = v
    m.config_extra["mcp-server"] = {"tuning": {"round": i}}


def test_kill_9_at_twenty_points_then_apply_converges(testhost: TestHost, tmp_path: Path, artifacts: Any,
                                                      backend: str, request: pytest.FixtureRequest) -> None:
    m, store = _mini(backend, request, tmp_path, testhost, artifacts)
    points = POINTS[backend]
    m.apply()
    # how long does an apply with work to do take, from process start? The faster of two (the first one
    # of a process pays for cold caches, and the machine's load varies)
    durations = []
    for i in (0, 1):
        _toggle(m, i)
        t0 = time.monotonic()
        m.apply()
        durations.append(time.monotonic() - t0)
    duration = min(durations)
    killed_at: list[float] = []
    for i in range(2, points + 2):
        _toggle(m, i)
        # spread over the apply, up to 85 % of its measured length: a point at its very end kills nothing
        # whenever this apply runs a little faster than the measured one (the machine's load varies)
        delay = 0.2 + (0.85 * duration - 0.2) * (i - 2) / (points - 1)
        proc = _start_apply(m)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at.append(delay)
        proc.wait()
        state = store.load()          # always parses (atomic writes; one transaction per write in PostgreSQL)
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
    assert len(killed_at) >= points * 3 // 4, f"only {len(killed_at)} applies were still running when killed"


def _running_release(host: TestHost, unit: str) -> str:
    pid = _exec(host, f"systemctl show -p MainPID --value {unit}").strip()
    return _exec(host, f"tr '\\0' ' ' < /proc/{pid}/cmdline 2>/dev/null") if pid and pid != "0" else ""


def _wait_for(cond: Any, proc: subprocess.Popen[str], timeout: float = 60) -> bool:
    """Poll cond() until it holds (True) or the apply ended or the time ran out (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_kill_9_in_the_health_gate_of_an_unhealthy_release_then_apply_ends_on_the_last_healthy(
        testhost: TestHost, tmp_path: Path, artifacts: Any, backend: str, request: pytest.FixtureRequest) -> None:
    """control-center 5.0.0 → 5.0.2-unhealthy, killed while the gate waits for its health (just after the
    restart, and in the middle of the wait) and while rolling back: the same apply again must go back
    to 5.0.0, the last release recorded healthy (not to the unhealthy release `current` points at)."""
    m, store = _mini(backend, request, tmp_path, testhost, artifacts)
    m.health_timeout = 6
    m.apply()
    unit = "provisioning-control-center.service"
    current = "/opt/provisioning/control-center/current"
    m.versions["control-center"] = "5.0.2-unhealthy"
    for point, extra in (("gate start", 0.0), ("mid gate", 3.0), ("rolling back", 0.0)):
        proc = _start_apply(m)
        if point == "rolling back":   # the gate gave up: `current` is switched back while recon still runs
            reached = (_wait_for(lambda: "5.0.2-unhealthy" in _running_release(testhost, unit), proc)
                       and _wait_for(lambda: _exec(testhost, f"readlink {current}").strip() == "releases/5.0.0",
                                     proc))
        else:
            reached = _wait_for(lambda: "5.0.2-unhealthy" in _running_release(testhost, unit), proc)
        time.sleep(extra)
        assert reached and proc.poll() is None, f"{point}: the apply ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        rec = store.load().record("node1", "control-center")
        assert rec is not None and (rec.status, rec.version, rec.previous_version) == (
            "in-progress", "5.0.2-unhealthy", "5.0.0"), f"{point}: {rec}"
        res = m.apply(check=1)
        assert "rolling back to 5.0.0" in res.stdout and "back on 5.0.0, healthy" in res.stdout, \
            f"{point}:\n{res.stdout}"
        assert "5.0.2-unhealthy failed" not in res.stdout
        assert _exec(testhost, f"readlink {current}").strip() == "releases/5.0.0"
        answer = health(testhost, 8081)
        assert (answer["version"], answer["status"]) == ("5.0.0", "healthy"), f"{point}: {answer}"
        rec = store.load().record("node1", "control-center")
        assert rec is not None and (rec.status, rec.version) == ("rolled-back", "5.0.0"), f"{point}: {rec}"
        assert "5.0.0" in _exec(testhost, "ls /opt/provisioning/control-center/releases").split()
        # consistent: the next plan wants the spec's release again, as a desired change, nothing else
        plan = json.loads(m.run("plan", "--format", "json", check=0).stdout)
        assert [(c["address"], c["action"], c["drift"]) for c in plan["changes"]] == [
            ("node1/control-center", "replace", False)], f"{point}: {plan['changes']}"
