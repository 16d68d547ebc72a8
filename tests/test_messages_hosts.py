"""Issue 7 section 5 on real hosts: a changed host key, a full disk, a connection lost mid-apply. Each is
a clear error with exit 1 that says what happened, what was done and what to do; never a partial release."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hosttools import CANARY, NAMES, Mini, _exec, _run_in, health, pids, recon

from reconciler.state import StateStore
from testhosts import TestHost


def _hosts_layer(tmp_path: Path, host: TestHost, **changes: object) -> Path:
    path = tmp_path / "hosts-override.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "hosts": {"node1": {**host.spec_entry(), **changes}}}))
    return path


def test_host_key_mismatch_is_called_a_mismatch_and_never_suggests_accepting(testhost: TestHost, tmp_path: Path,
                                                                            artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    spec = m.write()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"{testhost.address} {' '.join(other)}\n")
    state = ["--state", str(tmp_path / "state")]
    res = recon("plan", "-f", str(spec), "-f", str(_hosts_layer(tmp_path, testhost, known_hosts=str(wrong))), *state,
                cwd=tmp_path, check=1)
    text = " ".join((res.stdout + res.stderr).split())   # the plan's text is wrapped
    assert "HOST KEY MISMATCH" in text and "identity changed" in text and "possibly an attack" in text
    assert str(wrong) in text
    assert "ssh-keyscan" not in text and "add it" not in text and "host key not in" not in text, text
    assert "Traceback" not in res.stderr
    assert _exec(testhost, "ls /opt/provisioning 2>/dev/null") == ""  # nothing touched

    absent = tmp_path / "known_hosts_empty"
    absent.write_text("")
    res = recon("plan", "-f", str(spec), "-f", str(_hosts_layer(tmp_path, testhost, known_hosts=str(absent))), *state,
                cwd=tmp_path, check=1)
    text = " ".join((res.stdout + res.stderr).split())
    assert f"host key not in {absent}; add it with ssh-keyscan" in text and "MISMATCH" not in text


def test_disk_full_says_no_space_on_host_at_path_and_leaves_no_partial_release(testhost: TestHost, tmp_path: Path,
                                                                               artifacts: Any) -> None:
    assert _run_in(testhost, "mkdir -p /opt/provisioning && mount -t tmpfs -o size=512k tmpfs /opt/provisioning"
                   ).returncode == 0
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    # fill the file system (cat stops at ENOSPC), then ask for a new release
    _run_in(testhost, "cat /dev/zero > /opt/provisioning/filler 2>/dev/null; true")
    m.versions["control-center"] = "5.0.1"
    before = pids(testhost, NAMES)
    res = m.apply(check=1)
    out = " ".join(res.stdout.split())
    assert "no space left on node1 at /opt/provisioning/control-center/releases/5.0.1: " in out, res.stdout
    assert re.search(r"\d+ KiB free on /opt/provisioning, release 5\.0\.1 needs \d+ KiB", out), out
    assert "the partial release /opt/provisioning/control-center/releases/5.0.1 was removed" in out
    assert "control-center still runs 5.0.0" in out and "size mismatch" not in out
    assert "Traceback" not in res.stderr
    releases = _exec(testhost, "ls /opt/provisioning/control-center/releases").split()
    assert releases == ["5.0.0"], releases
    assert _exec(testhost, "readlink /opt/provisioning/control-center/current").strip() == "releases/5.0.0"
    assert pids(testhost, NAMES) == before and health(testhost, 8081)["version"] == "5.0.0"
    rec = StateStore(tmp_path / "state").load().record("node1", "control-center")
    assert rec is not None and rec.version == "5.0.0" and rec.status == "applied"
    # with space again, the same apply converges
    _run_in(testhost, "rm -f /opt/provisioning/filler")
    m.apply()
    assert health(testhost, 8081)["version"] == "5.0.1"


def _kill_sshd(host: TestHost) -> None:
    """Stop the host's sshd and kill every process of its unit (the listener and each connection's sshd),
    by unit: nothing else in the host is touched."""
    _run_in(host, "systemctl stop ssh.socket 2>/dev/null; systemctl stop ssh.service; "
                  "systemctl kill --kill-whom=all --signal=KILL ssh.service; true")


def test_connection_lost_mid_apply_says_unreachable_what_was_done_and_what_to_run(testhost: TestHost,
                                                                                  tmp_path: Path,
                                                                                  artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.health_timeout = 30
    m.apply()
    m.versions["control-center"] = "5.0.2-unhealthy"      # its health gate waits the whole timeout
    m.config_extra["mcp-server"] = {"feature": {"x": 1}}  # wave 3, never started
    spec = m.write()
    cmd = [sys.executable, "-m", "reconciler", "apply", "--auto-approve", "-f", str(spec),
           "--state", str(tmp_path / "state")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "NO_COLOR": "1", "VAULT_TOKEN": CANARY})
    try:
        deadline = time.monotonic() + 60
        while _exec(testhost, "readlink /opt/provisioning/control-center/current").strip() != \
                "releases/5.0.2-unhealthy":
            assert time.monotonic() < deadline and proc.poll() is None, "the apply never switched"
            time.sleep(0.2)
        time.sleep(1.5)                                     # inside the health gate
        _kill_sshd(testhost)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    text = " ".join(out.split())
    assert "node1 became unreachable (" in text
    assert ("Done: release 5.0.2-unhealthy installed and switched to, provisioning-control-center.service "
            "restarted (recorded as in-progress)") in text
    assert "Not done: the health check has no result, and no rollback to 5.0.0 was tried" in text
    assert ("run `recon plan` to see where it stands, then `recon apply` to finish, or "
            "`recon rollback control-center --host node1 --to 5.0.0`") in text
    assert "node1/mcp-server: skipped — node1 became unreachable" in text
    assert "rollback to 5.0.0 failed" not in text and "no result;" not in text
    rec = StateStore(tmp_path / "state").load().record("node1", "control-center")
    assert rec is not None and rec.status == "in-progress" and rec.previous_version == "5.0.0"
    # the advice works: with sshd back, the plan reads the host and shows the unfinished service
    _run_in(testhost, "systemctl start ssh.service")
    plan = json.loads(m.run("plan", "--format", "json", check=0).stdout)
    assert "node1/control-center" in {c["address"] for c in plan["changes"]}
