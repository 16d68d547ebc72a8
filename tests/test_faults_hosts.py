"""Promises under faults (issue 7, section 3), through the CLI on one real systemd host over SSH that
the cases share (each starts from the same converged three-service spec):

- `recon apply --no-rollback` leaves an unhealthy release in place, reported failed, exit 1;
- the rollback target is the last release recorded healthy, not what the host shows as `current`;
- drop-ins written by hand in /etc or /run/systemd/system/UNIT.d/ are drift, removed by apply
  unless `ignore_drift` covers them;
- a `current` link pointed outside the releases by hand never becomes the previous release.

The kill -9 case (a crash in the health gate of an unhealthy release) is in test_crash_hosts.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import _Indices, forget_known_hosts_cache
from hosttools import Mini, _exec, health, show

from reconciler.state import StateStore
from testhosts import TestHost, TestHosts

CC = "/opt/provisioning/control-center"
ORCH_UNIT = "provisioning-orchestrator.service"


class FaultsMini(Mini):
    """Mini with per-service extra spec keys (ignore_drift)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.extra: dict[str, dict[str, Any]] = {}

    def doc(self) -> dict[str, Any]:
        doc = super().doc()
        for name, keys in self.extra.items():
            doc["services"][name].update(keys)
        return doc


@pytest.fixture(scope="module")
def host(testhosts_pool: TestHosts, _testhost_indices: _Indices) -> Iterator[TestHost]:
    """One host for every case of this module (boot time is most of a host test's cost)."""
    indices = _testhost_indices.take(testhosts_pool, 1)
    try:
        (booted,) = testhosts_pool.up(indices)
        forget_known_hosts_cache()
        yield booted
    finally:
        testhosts_pool.down(indices)
        forget_known_hosts_cache()


@pytest.fixture(scope="module")
def mini(host: TestHost, tmp_path_factory: pytest.TempPathFactory, artifacts: Any) -> FaultsMini:
    return FaultsMini(tmp_path_factory.mktemp("faults"), [host], artifacts)


@pytest.fixture
def m(mini: FaultsMini) -> FaultsMini:
    """The shared spec, converged on the host: every service on 5.0.0, no extra keys."""
    mini.versions = {"orchestrator": "5.0.0", "control-center": "5.0.0", "mcp-server": "5.0.0"}
    mini.config_extra, mini.extra = {}, {}
    mini.apply(check=None)
    mini.run("plan", "--detailed-exitcode", check=0)
    return mini


def _record(m: Mini, service: str) -> Any:
    rec = StateStore(m.dir / "state").load().record("node1", service)
    assert rec is not None
    return rec


def _current(host: TestHost) -> str:
    return _exec(host, f"readlink {CC}/current").strip()


def test_no_rollback_leaves_the_unhealthy_release_and_the_next_apply_returns_to_the_last_healthy(
        host: TestHost, m: FaultsMini) -> None:
    m.versions["control-center"] = "5.0.2-unhealthy"
    res = m.run("apply", "--auto-approve", "--no-rollback", check=1)
    assert "health check failed" in res.stdout
    assert "↩" not in res.stdout and "rolling back" not in res.stdout, res.stdout
    assert "0 rolled back, 1 failed" in res.stdout
    assert _current(host) == "releases/5.0.2-unhealthy"
    assert health(host, 8081)["version"] == "5.0.2-unhealthy"
    rec = _record(m, "control-center")
    assert (rec.status, rec.version, rec.previous_version) == ("failed", "5.0.2-unhealthy", "5.0.0")
    last = StateStore(m.dir / "state").history()[-1]
    assert (last["service"], last["result"], last["to"]) == ("control-center", "failed", "5.0.2-unhealthy")

    # the same apply with rollback: the host shows 5.0.2-unhealthy as current, but the release to go
    # back to is the last one recorded healthy
    res = m.apply(check=1)
    assert "rolling back to 5.0.0" in res.stdout and "back on 5.0.0, healthy" in res.stdout, res.stdout
    assert _current(host) == "releases/5.0.0"
    assert health(host, 8081)["version"] == "5.0.0" and health(host, 8081)["status"] == "healthy"
    rec = _record(m, "control-center")
    assert (rec.status, rec.version) == ("rolled-back", "5.0.0")


def test_hand_written_drop_ins_are_drift_and_removed_unless_ignored(host: TestHost, m: FaultsMini) -> None:
    etc_dir = f"/etc/systemd/system/{ORCH_UNIT}.d"
    run_dir = f"/run/systemd/system/{ORCH_UNIT}.d"
    _exec(host, f"mkdir -p {etc_dir} {run_dir} && printf '[Service]\\nMemoryMax=80M\\n' > {etc_dir}/override.conf"
                f" && printf '[Service]\\nTasksMax=9\\n' > {run_dir}/50-tasks.conf && systemctl daemon-reload")
    assert show(host, ORCH_UNIT, "MemoryMax")["MemoryMax"] == str(80 * 1024**2)
    res = m.run("plan", "--detailed-exitcode", check=2)
    assert "set at run time" not in res.stdout
    assert "unit.dropin[override.conf]" in res.stdout and "unit.dropin[run/50-tasks.conf]" in res.stdout
    plan = json.loads(m.run("plan", "--format", "json", check=0).stdout)
    (change,) = plan["changes"]
    assert (change["address"], change["action"], change["drift"]) == ("node1/orchestrator", "update", True)
    fields = {f["path"]: (f["before"], f["after"], f["kind"]) for f in change["fields"]}
    assert fields == {"unit.dropin[override.conf]": ("MemoryMax=80M", None, "drift"),
                      "unit.dropin[run/50-tasks.conf]": ("TasksMax=9", None, "drift")}

    # ignore_drift for one of them: that one stays, the other is removed
    m.extra = {"orchestrator": {"ignore_drift": ["unit.dropin[override.conf]"]}}
    m.apply()
    assert _exec(host, f"ls {etc_dir} {run_dir} 2>/dev/null").split() == [f"{etc_dir}:", "override.conf",
                                                                         f"{run_dir}:"]
    assert show(host, ORCH_UNIT, "MemoryMax", "TasksMax") == {"MemoryMax": str(80 * 1024**2), "TasksMax": "64"}
    m.run("plan", "--detailed-exitcode", check=0)
    m.extra = {"orchestrator": {"ignore_drift": ["unit.dropin"]}}
    m.run("plan", "--detailed-exitcode", check=0)

    # not ignored: apply removes it, the spec's MemoryMax is live and the next plan is empty
    m.extra = {}
    res = m.apply()
    assert "✓ node1/orchestrator: updated" in res.stdout, res.stdout
    assert _exec(host, f"ls -A {etc_dir} 2>/dev/null").split() == []
    assert show(host, ORCH_UNIT, "MemoryMax")["MemoryMax"] == str(96 * 1024**2)
    m.run("plan", "--detailed-exitcode", check=0)


def test_current_pointed_outside_the_releases_never_becomes_the_previous_release(host: TestHost,
                                                                                  m: FaultsMini) -> None:
    m.versions["control-center"] = "5.0.1"
    m.apply()
    assert _record(m, "control-center").previous_version == "5.0.0"
    _exec(host, f"mkdir -p /tmp/evil && cp {CC}/releases/5.0.1/* /tmp/evil/ && ln -sfn /tmp/evil {CC}/current")
    plan = json.loads(m.run("plan", "--format", "json", check=0).stdout)
    (change,) = plan["changes"]
    assert (change["action"], change["from_version"], change["to_version"]) == ("replace", "evil", "5.0.1")
    m.apply()
    assert _current(host) == "releases/5.0.1"
    rec = _record(m, "control-center")
    assert (rec.status, rec.version, rec.previous_version) == ("applied", "5.0.1", "5.0.0")
    res = m.run("rollback", "control-center", check=0)
    assert "rolled back to 5.0.0" in res.stdout
    assert health(host, 8081)["version"] == "5.0.0"
    rec = _record(m, "control-center")
    assert (rec.version, rec.previous_version) == ("5.0.0", "5.0.1")
    _exec(host, "rm -rf /tmp/evil")
