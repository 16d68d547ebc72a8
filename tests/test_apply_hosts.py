"""`recon apply`, `recon rollback` and state, exercised like an operator would: the CLI in a
subprocess, against real systemd hosts (systemd-nspawn) over real SSH."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from hosttools import CANARY, NAMES, REPO, Mini, _exec, _run_in, health, pids, recon, show

from reconciler.state import StateStore
from testhosts import TestHost

# the demo override reads the vault token from the demo's file; these tests give it in the environment
ENV_TOKEN = {"services": {"vault-service": {"secrets": {
    "VAULT_TOKEN": {"from_file": None, "from_env": "VAULT_TOKEN"}}}}}


def test_fresh_apply_of_the_platform_brings_nine_services_up_in_order(testhost: TestHost, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "reconciler.standin.build", "--out", str(REPO / "artifacts")],
                   check=True, capture_output=True)
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(yaml.safe_dump({"version": 1, "hosts": {"node1": testhost.spec_entry()}, **ENV_TOKEN}))
    files = ["-f", str(REPO / "specs/platform.yaml"), "-f", str(REPO / "specs/overrides/local.yaml"),
             "-f", str(hosts)]
    state = ["--state", str(tmp_path / "state")]
    res = recon("apply", *files, *state, "--auto-approve", cwd=tmp_path, check=0)
    assert "Apply complete: 9 created" in res.stdout
    status = json.loads(recon("status", *files, *state, "--format", "json", cwd=tmp_path, check=0).stdout)
    assert len(status["services"]) == 9
    assert all(r["healthy"] and r["running"] == r["desired"] for r in status["services"]), status

    # dependency order: every unit became active after the units it depends on
    from reconciler.spec import load_spec

    spec = load_spec([str(REPO / "specs/platform.yaml"), str(REPO / "specs/overrides/local.yaml"), str(hosts)])
    started = {n: int(show(testhost, f"provisioning-{n}.service", "ActiveEnterTimestampMonotonic")
                      ["ActiveEnterTimestampMonotonic"]) for n in spec.services}
    for name, svc in spec.services.items():
        for dep in svc.depends_on:
            assert started[dep] < started[name], f"{dep} must start before {name}"

    # the unit carries what PRODUCT.md fixes, and the limit is live
    unit = _exec(testhost, "cat /etc/systemd/system/provisioning-control-center.service")
    for key in ("ExecStart=/opt/provisioning/control-center/releases/5.0.0/control-center --config "
                "/etc/provisioning/control-center.toml", "User=provisioning", "Restart=on-failure",
                "WatchdogSec=30s", "MemoryMax=128M", "MemoryHigh=96M", "TasksMax=64", "LimitNOFILE=65536",
                "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectSystem=strict", "ProtectHome=yes",
                "Requires=provisioning-orchestrator.service provisioning-vault-service.service",
                "ReadWritePaths=-/var/lib/provisioning/control-center"):
        assert key in unit, key
    assert show(testhost, "provisioning-orchestrator.service", "MemoryMax")["MemoryMax"] == str(256 * 1024**2)
    shell = _exec(testhost, "getent passwd provisioning").strip().split(":")
    assert shell[-1] == "/usr/sbin/nologin" and int(shell[2]) < 1000

    # a second apply changes nothing and restarts nothing
    before = pids(testhost, list(spec.services))
    res = recon("apply", *files, *state, "--auto-approve", cwd=tmp_path, check=0)
    assert "No changes" in res.stdout
    assert pids(testhost, list(spec.services)) == before
    recon("plan", *files, *state, "--detailed-exitcode", cwd=tmp_path, check=0)


def test_version_bump_replaces_only_that_service_and_keeps_the_old_release(
        testhost: TestHost, tmp_path: Path, artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    before = pids(testhost, NAMES)
    m.versions["control-center"] = "5.0.1"
    plan = json.loads(m.run("plan", "--format", "json", check=0).stdout)
    assert [(c["address"], c["action"]) for c in plan["changes"]] == [("node1/control-center", "replace")]
    res = m.apply()
    assert "replaced 5.0.0 → 5.0.1" in res.stdout
    after = pids(testhost, NAMES)
    assert after["control-center"] != before["control-center"]
    assert after["orchestrator"] == before["orchestrator"] and after["mcp-server"] == before["mcp-server"]
    assert health(testhost, 8081)["version"] == "5.0.1"
    releases = _exec(testhost, "ls /opt/provisioning/control-center/releases").split()
    assert releases == ["5.0.0", "5.0.1"]
    assert _exec(testhost, "readlink /opt/provisioning/control-center/current").strip() == "releases/5.0.1"
    m.run("plan", "--detailed-exitcode", check=0)


def test_config_only_change_with_reload_keeps_the_process(testhost: TestHost, tmp_path: Path,
                                                          artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    pid = pids(testhost, ["control-center"])["control-center"]
    gen = health(testhost, 8081)["config_generation"]
    m.config_extra["control-center"] = {"rbac": {"reload_interval": 30}}
    plan = json.loads(m.run("plan", "--format", "json", check=0).stdout)
    (change,) = plan["changes"]
    assert change["action"] == "reload" and change["effect"] == "reload"
    assert [f["path"] for f in change["fields"]] == ["config.rbac"] or any(
        f["path"].startswith("config.rbac") for f in change["fields"])
    m.apply()
    assert pids(testhost, ["control-center"])["control-center"] == pid
    assert health(testhost, 8081, "/config")["rbac"]["reload_interval"] == 30
    assert health(testhost, 8081)["config_generation"] == gen + 1

    # recon rollback undoes a config-only change (the release stays, its earlier files come back)
    res = m.run("rollback", "control-center", check=0)
    assert "rolled back to 5.0.0 as it was before the last apply, healthy" in res.stdout, res.stdout
    assert "Rollback complete: 1 rolled back, 0 failed." in res.stdout
    assert "rbac" not in health(testhost, 8081, "/config")
    assert _exec(testhost, "readlink /opt/provisioning/control-center/current").strip() == "releases/5.0.0"
    rec = StateStore(tmp_path / "state").load().record("node1", "control-center")
    assert rec is not None and not rec.in_place and "reload_interval" not in rec.config_text
    plan = json.loads(m.run("plan", "--format", "json", check=0).stdout)   # the spec still wants the change
    assert [(c["address"], c["action"]) for c in plan["changes"]] == [("node1/control-center", "reload")]
    assert all(f["kind"] == "desired" for f in plan["changes"][0]["fields"])
    # nothing more to undo, and no earlier release: a clear error
    res = m.run("rollback", "control-center", check=1)
    assert "no previous release recorded" in res.stderr


def test_unhealthy_release_is_rolled_back_and_dependents_are_untouched(testhost: TestHost, tmp_path: Path,
                                                                        artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    before = pids(testhost, NAMES)
    m.versions["control-center"] = "5.0.2-unhealthy"
    m.config_extra["mcp-server"] = {"feature": {"x": 1}}     # a dependent's change that must not run
    res = m.apply(check=1)
    assert "rolled back" in res.stdout
    # the gate's wait is never silent: the waiting service, its elapsed time and the last answer
    waits = [ln for ln in res.stdout.splitlines() if "◷ node1/control-center: waiting for health: HTTP 503" in ln]
    assert waits and "s of 4s)" in waits[0], res.stdout
    assert health(testhost, 8081)["version"] == "5.0.0"
    assert _exec(testhost, "readlink /opt/provisioning/control-center/current").strip() == "releases/5.0.0"
    after = pids(testhost, NAMES)
    assert after["mcp-server"] == before["mcp-server"] and after["orchestrator"] == before["orchestrator"]
    assert "feature" not in health(testhost, 8083, "/config")
    st = StateStore(tmp_path / "state")
    rec = st.load().record("node1", "control-center")
    assert rec is not None and rec.status == "rolled-back" and rec.version == "5.0.0"
    results = [(e["service"], e["result"]) for e in st.history()]
    assert ("control-center", "rolled-back") in results and ("mcp-server", "skipped") in results
    # the next plan still wants the new version (the spec did not change)
    plan = json.loads(m.run("plan", "--format", "json", check=0).stdout)
    assert {c["address"] for c in plan["changes"]} == {"node1/control-center", "node1/mcp-server"}
    hist = recon("history", "control-center", "--state", str(tmp_path / "state"), cwd=tmp_path, check=0).stdout
    assert "rolled-back" in hist


def test_recon_rollback_to_a_kept_release_and_memory_max_is_enforced(testhost: TestHost, tmp_path: Path,
                                                                     artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    m.versions["control-center"] = "5.0.1"
    m.apply()
    res = m.run("rollback", "control-center", "--to", "5.0.0", check=0)
    assert "rolled back to 5.0.0" in res.stdout
    assert health(testhost, 8081)["version"] == "5.0.0"
    rec = StateStore(tmp_path / "state").load().record("node1", "control-center")
    assert rec is not None and rec.version == "5.0.0" and rec.previous_version == "5.0.1"
    # plan now shows the spec's 5.0.1 as a desired change again (not as drift)
    plan = json.loads(m.run("plan", "--format", "json", check=0).stdout)
    (change,) = plan["changes"]
    assert change["action"] == "replace" and change["to_version"] == "5.0.1" and not change["drift"]

    # MemoryMax shows in systemctl show and is enforced: a process in the unit's cgroup that
    # allocates past 96M is killed
    unit = "provisioning-orchestrator.service"
    assert show(testhost, unit, "MemoryMax")["MemoryMax"] == str(96 * 1024**2)
    cg = _exec(testhost, f"systemctl show -p ControlGroup --value {unit}").strip()
    hog = ("echo $$ > /sys/fs/cgroup/memory" + cg + "/cgroup.procs && "
           "exec python3 -c 'import time; b = bytearray(200 * 1024 * 1024); time.sleep(1)'")
    res2 = _run_in(testhost, hog)
    assert res2.returncode in (137, -9), (res2.returncode, res2.stderr)


def test_two_hosts_roll_in_batches_and_a_failing_batch_stops_the_rollout(
        make_testhosts: Any, tmp_path: Path, artifacts: Any) -> None:
    hosts = make_testhosts(3)
    m = Mini(tmp_path, hosts, artifacts, batch_size=1)
    m.apply()
    m.versions["control-center"] = "5.0.1"
    res = m.apply()
    assert res.stdout.count("replaced 5.0.0 → 5.0.1") == 3
    assert "batch 1/3" in res.stdout and "batch 3/3" in res.stdout
    m.versions["control-center"] = "5.0.2-unhealthy"
    res = m.apply(check=1)
    assert "rollout stopped" in res.stdout
    versions = [health(h, 8081)["version"] for h in hosts]
    assert versions == ["5.0.1", "5.0.1", "5.0.1"]  # node1 rolled back, node2 and node3 never touched
    touched = [e["host"] for e in StateStore(tmp_path / "state").history() if e.get("to") == "5.0.2-unhealthy"
               and e["result"] != "skipped"]
    assert touched == ["node1"]


def test_lock_refuses_a_second_apply_and_a_stale_saved_plan_is_refused(testhost: TestHost, tmp_path: Path,
                                                                        artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    store = StateStore(tmp_path / "state")
    with store.lock("test holder"):
        res = m.apply(check=1)
    assert "locked by" in res.stderr and "test holder" in res.stderr and "force-unlock" in res.stderr

    # a saved plan goes stale when the host moves
    m.versions["control-center"] = "5.0.1"
    m.run("plan", "-o", str(tmp_path / "p1.plan"), check=0)
    _exec(testhost, "systemctl stop provisioning-mcp-server.service")
    res = recon("apply", str(tmp_path / "p1.plan"), "--state", str(tmp_path / "state"), cwd=tmp_path, check=1)
    assert "stale" in res.stderr and "node1/mcp-server: ActiveState active → inactive (host)" in res.stderr
    # … and when the spec moves
    m.run("plan", "-o", str(tmp_path / "p2.plan"), check=0)
    m.versions["orchestrator"] = "5.0.1"
    m.write()
    res = recon("apply", str(tmp_path / "p2.plan"), "--state", str(tmp_path / "state"), cwd=tmp_path, check=1)
    assert "stale" in res.stderr and "node1/orchestrator: version 5.0.0 → 5.0.1 (spec)" in res.stderr
    # a fresh saved plan applies exactly
    m.run("plan", "-o", str(tmp_path / "p3.plan"), check=0)
    res = recon("apply", str(tmp_path / "p3.plan"), "--state", str(tmp_path / "state"), cwd=tmp_path, check=0)
    assert health(testhost, 8080)["version"] == "5.0.1"
    m.run("plan", "--detailed-exitcode", check=0)


def test_a_canary_secret_appears_nowhere(testhost: TestHost, tmp_path: Path, artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    outputs = [m.apply().stdout]
    m.versions["control-center"] = "5.0.1"
    for fmt in ("text", "json", "markdown"):
        outputs.append(m.run("plan", "--format", fmt, check=0).stdout)
    m.run("plan", "-o", str(tmp_path / "x.plan"), check=0)
    outputs.append(recon("apply", str(tmp_path / "x.plan"), "--state", str(tmp_path / "state"), "-v",
                         cwd=tmp_path, check=0).stdout)
    outputs.append(m.run("status", check=0).stdout)
    outputs.append(recon("history", "--state", str(tmp_path / "state"), cwd=tmp_path, check=0).stdout)
    files_text = [p.read_text() for p in (tmp_path / "state").iterdir() if p.is_file()]
    files_text.append((tmp_path / "x.plan").read_text())
    host_text = _exec(testhost, "cat /etc/systemd/system/provisioning-*.service /etc/provisioning/*.toml; "
                                "journalctl --no-pager -o cat; cat /opt/provisioning/*/releases/*/*.service")
    for text in [*outputs, *files_text, host_text]:
        assert CANARY not in text
    # the secret did reach the service, through its 0600 EnvironmentFile
    assert "VAULT_TOKEN" in health(testhost, 8081)["secrets_present"]
    assert _exec(testhost, "stat -c %a /etc/provisioning/control-center.env").strip() == "600"
    assert CANARY in _exec(testhost, "cat /etc/provisioning/control-center.env")


def test_status_reports_desired_running_health_and_memory(testhost: TestHost, tmp_path: Path,
                                                          artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    _exec(testhost, "systemctl stop provisioning-mcp-server.service")
    res = m.run("status", check=1)
    assert "mcp-server" in res.stdout and "inactive" in res.stdout
    data = json.loads(m.run("status", "--format", "json", check=1).stdout)
    by = {r["service"]: r for r in data["services"]}
    assert by["orchestrator"]["healthy"] and by["orchestrator"]["memory_max"] == "96.0M"
    assert not by["mcp-server"]["healthy"]
    assert by["control-center"]["memory"].endswith("M")
