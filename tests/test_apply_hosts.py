"""`recon apply`, `recon rollback` and state, exercised like an operator would: the CLI in a
subprocess, against real systemd hosts (systemd-nspawn) over real SSH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.standin.build import build
from reconciler.state import StateStore
from reconciler.testhosts import TestHost

REPO = Path(__file__).resolve().parents[1]
CANARY = "canary-Zq8vT3-secret-value"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[Path, str]]:
    out = tmp_path_factory.mktemp("artifacts")
    items = [("orchestrator", "5.0.0"), ("orchestrator", "5.0.1"), ("control-center", "5.0.0"),
             ("control-center", "5.0.1"), ("control-center", "5.0.2-unhealthy"), ("mcp-server", "5.0.0")]
    return build(out, items)


def recon(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 240,
          check: int | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "VAULT_TOKEN": CANARY, "NO_COLOR": "1", **(env or {})}
    res = subprocess.run([sys.executable, "-m", "reconciler", *args], cwd=cwd, env=full_env, text=True,
                         capture_output=True, timeout=timeout)
    if check is not None:
        assert res.returncode == check, f"exit {res.returncode}\nSTDOUT:\n{res.stdout}\nSTDERR:\n{res.stderr}"
    return res


class Mini:
    """A three-service spec (orchestrator → control-center → mcp-server) on the given hosts."""

    def __init__(self, tmp: Path, hosts: list[TestHost], artifacts: dict[tuple[str, str], tuple[Path, str]],
                 batch_size: int = 1) -> None:
        self.dir = tmp
        self.hosts = hosts
        self.artifacts = artifacts
        self.versions = {"orchestrator": "5.0.0", "control-center": "5.0.0", "mcp-server": "5.0.0"}
        self.config_extra: dict[str, dict[str, Any]] = {}
        self.batch_size = batch_size
        self.health_timeout = 4

    def doc(self) -> dict[str, Any]:
        services: dict[str, Any] = {}
        deps = {"orchestrator": [], "control-center": ["orchestrator"], "mcp-server": ["control-center"]}
        ports = {"orchestrator": 8080, "control-center": 8081, "mcp-server": 8083}
        for name, version in self.versions.items():
            path, sha = self.artifacts[(name, version)]
            svc: dict[str, Any] = {
                "version": version,
                "artifact": {"path": str(path), "sha256": sha},
                "port": ports[name],
                "depends_on": deps[name],
                "config": {"server": {"port": ports[name]}, **self.config_extra.get(name, {})},
            }
            if name == "control-center":
                svc["reload"] = {"signal": "HUP"}
                svc["secrets"] = {"VAULT_TOKEN": {"from_env": "VAULT_TOKEN"}}
            services[name] = svc
        return {
            "version": 1,
            "hosts": {f"node{i + 1}": h.spec_entry() for i, h in enumerate(self.hosts)},
            "defaults": {
                "type": "notify",
                "args": ["--config", "{config_path}"],
                "restart": {"policy": "on-failure", "delay_s": 1, "watchdog_s": 30},
                "limits": {"memory_max": "96M", "memory_high": "64M", "tasks_max": 64},
                "health": {"http": "http://{address}:{port}/health", "timeout_s": self.health_timeout,
                           "interval_s": 0.2},
                "config": {"server": {"host": "{address}"}},
                "rollout": {"batch_size": self.batch_size, "max_failures": 0},
            },
            "services": services,
        }

    def write(self) -> Path:
        path = self.dir / "spec.yaml"
        path.write_text(yaml.safe_dump(self.doc(), sort_keys=False))
        return path

    def run(self, *args: str, check: int | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        spec = self.write()
        return recon(*args, "-f", str(spec), "--state", str(self.dir / "state"), cwd=self.dir, check=check, **kw)

    def apply(self, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "--auto-approve", check=check)


def show(host: TestHost, unit: str, *props: str) -> dict[str, str]:
    res = _exec(host, f"systemctl show -p {','.join(props)} {unit}")
    return dict(line.split("=", 1) for line in res.splitlines() if "=" in line)


def _run_in(host: TestHost, cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a shell command inside the host (nsenter into its PID 1's namespaces), as root."""
    return subprocess.run(["nsenter", "-t", str(host.leader_pid), "-a", "--", "env", "-i",
                           "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "sh", "-c", cmd],
                          capture_output=True, text=True, timeout=60)


def _exec(host: TestHost, cmd: str) -> str:
    return _run_in(host, cmd).stdout


def health(host: TestHost, port: int, path: str = "/health") -> dict[str, Any]:
    out = _exec(host, f"curl -s -m 3 http://{host.address}:{port}{path}")
    return json.loads(out)


def pids(host: TestHost, names: list[str]) -> dict[str, str]:
    return {n: show(host, f"provisioning-{n}.service", "MainPID")["MainPID"] for n in names}


NAMES = ["orchestrator", "control-center", "mcp-server"]


# ------------------------------------------------------------------------------------------------
def test_fresh_apply_of_the_platform_brings_nine_services_up_in_order(testhost: TestHost, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "reconciler.standin.build", "--out", str(REPO / "artifacts")],
                   check=True, capture_output=True)
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(yaml.safe_dump({"version": 1, "hosts": {"node1": testhost.spec_entry()}}))
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


def test_unhealthy_release_is_rolled_back_and_dependents_are_untouched(testhost: TestHost, tmp_path: Path,
                                                                        artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    before = pids(testhost, NAMES)
    m.versions["control-center"] = "5.0.2-unhealthy"
    m.config_extra["mcp-server"] = {"feature": {"x": 1}}     # a dependent's change that must not run
    res = m.apply(check=1)
    assert "rolled back" in res.stdout
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
    assert "stale" in res.stderr and "host node1 changed" in res.stderr
    # … and when the spec moves
    m.run("plan", "-o", str(tmp_path / "p2.plan"), check=0)
    m.versions["orchestrator"] = "5.0.1"
    m.write()
    res = recon("apply", str(tmp_path / "p2.plan"), "--state", str(tmp_path / "state"), cwd=tmp_path, check=1)
    assert "stale" in res.stderr and "spec" in res.stderr
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
    time.sleep(0)
