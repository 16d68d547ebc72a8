"""`logs:` on a real host: the log directory created for the service account and writable under
`ProtectSystem=strict`, the stand-in's log file in it, `/etc/logrotate.d/provisioning` accepted by
`logrotate -d`, a forced rotation (`logrotate -f`) that reloads only the service with a reload signal,
and the file planned like every recon file (no change, drift after a hand edit, deleted with `logs:`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hosttools import Mini, _exec, _run_in, pids

from testhosts import TestHost

LOGROTATE = "/etc/logrotate.d/provisioning"
LOG_DIR = "/var/log/provisioning"


class LogsMini(Mini):
    """Mini's three services (control-center reloads on HUP) with `logs:` in defaults, the stand-in told
    where its file is through the `{log_file}` placeholder."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.logs: dict[str, Any] | None = {"dir": LOG_DIR, "rotate": {"period": "daily", "keep": 3,
                                                                       "compress": True}}

    def doc(self) -> dict[str, Any]:
        d = super().doc()
        if self.logs is not None:
            d["defaults"]["logs"] = self.logs
            d["defaults"]["config"]["standin"] = {"log_file": "{log_file}"}
        return d


def _wait_for(host: TestHost, cmd: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        res = _run_in(host, cmd)
        if res.returncode == 0 or time.monotonic() > deadline:
            assert res.returncode == 0, f"{cmd}: {res.stdout}{res.stderr}"
            return res.stdout
        time.sleep(0.3)


def _reloads(host: TestHost, unit: str) -> int:
    """How many SIGHUPs the unit's process logged (the stand-in logs each one)."""
    return int(_exec(host, f"journalctl -q -o cat -u {unit} | grep -c 'SIGHUP received'").strip() or 0)


def test_log_files_in_a_rotated_dir_under_protect_system_strict(testhost: TestHost, tmp_path: Path,
                                                                artifacts: Any) -> None:
    host = testhost
    m = LogsMini(tmp_path, [host], artifacts)
    plan = m.run("plan", check=0).stdout
    assert f"+ node1:{LOGROTATE}: create" in plan and f"directory {LOG_DIR} (will be created: " \
        "provisioning:provisioning 750)" in plan, plan
    m.apply()

    # the directory and each service's file, written by the service account under ProtectSystem=strict
    assert _exec(host, f"stat -c '%U:%G %a' {LOG_DIR}").strip() == "provisioning:provisioning 750"
    unit = _exec(host, "systemctl show -p ProtectSystem,ReadWritePaths provisioning-orchestrator.service")
    assert "ProtectSystem=strict" in unit and LOG_DIR in unit, unit
    for name in ("orchestrator", "control-center", "mcp-server"):
        log = f"{LOG_DIR}/{name}.log"
        _wait_for(host, f"test -s {log}")
        assert _exec(host, f"stat -c '%U:%G' {log}").strip() == "provisioning:provisioning"
        assert f"{name} 5.0.0" in _exec(host, f"cat {log}")
        assert f"PROVISIONING_LOG_FILE={log}" in _exec(host, f"systemctl show -p Environment provisioning-{name}")

    # logrotate accepts the file recon wrote (root-owned, 0644), as a dry run
    assert _exec(host, f"stat -c '%U:%G %a' {LOGROTATE}").strip() == "root:root 644"
    dry = _run_in(host, f"logrotate -d {LOGROTATE}")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "error" not in (dry.stdout + dry.stderr).lower(), dry.stdout + dry.stderr
    assert f"rotating pattern: {LOG_DIR}/control-center.log" in dry.stdout + dry.stderr

    # a forced rotation: each file rotated, a fresh one created for the account, only control-center reloaded
    before = pids(host, ["orchestrator", "control-center", "mcp-server"])
    hups = {n: _reloads(host, f"provisioning-{n}.service") for n in before}
    forced = _run_in(host, f"logrotate -f -s /var/lib/logrotate/recon-test.status {LOGROTATE}")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    for name in before:
        assert _exec(host, f"stat -c '%U:%G' {LOG_DIR}/{name}.log.1").strip() == "provisioning:provisioning"
    _wait_for(host, "journalctl -q -o cat -u provisioning-control-center.service | grep -c 'SIGHUP received' | "
                    f"grep -qx {hups['control-center'] + 1}")
    assert _reloads(host, "provisioning-orchestrator.service") == hups["orchestrator"]
    assert _reloads(host, "provisioning-mcp-server.service") == hups["mcp-server"]
    assert pids(host, list(before)) == before              # reloaded or left alone: nothing restarted
    _wait_for(host, f"grep -q 'config reloaded' {LOG_DIR}/control-center.log")   # writes the new file

    # converged: no change; a hand edit is drift, and apply puts the file back
    assert m.run("plan", "--detailed-exitcode", check=0).returncode == 0
    _exec(host, f"sed -i 's/rotate 3/rotate 99/' {LOGROTATE}")
    res = m.run("plan", "--format", "json", check=0)
    doc = json.loads(res.stdout)
    files = [c for c in doc["changes"] if c["address"] == f"node1:{LOGROTATE}"]
    assert len(files) == 1 and files[0]["action"] == "update" and files[0]["drift"], res.stdout
    m.apply()
    assert "rotate 3\n" in _exec(host, f"cat {LOGROTATE}")

    # `logs:` dropped: the file recon wrote is deleted; the directory and the logs stay (like data)
    m.logs = None
    plan = m.run("plan", check=0).stdout
    assert f"- node1:{LOGROTATE}: delete" in plan, plan
    m.apply()
    assert _run_in(host, f"test -e {LOGROTATE}").returncode == 1
    assert _run_in(host, f"test -s {LOG_DIR}/orchestrator.log").returncode == 0
    assert m.run("plan", "--detailed-exitcode", check=0).returncode == 0


def test_a_logrotate_file_recon_did_not_write_is_refused(testhost: TestHost, tmp_path: Path, artifacts: Any) -> None:
    host = testhost
    _exec(host, f"printf '/var/log/other.log {{\\n  weekly\\n}}\\n' > {LOGROTATE}")
    m = LogsMini(tmp_path, [host], artifacts)
    res = m.run("apply", "--auto-approve", check=1)
    assert f"node1: {LOGROTATE} exists and recon did not write it" in res.stdout + res.stderr, res.stdout + res.stderr
    assert "/var/log/other.log" in _exec(host, f"cat {LOGROTATE}")
    assert _run_in(host, "test -e /etc/systemd/system/provisioning-orchestrator.service").returncode == 1
