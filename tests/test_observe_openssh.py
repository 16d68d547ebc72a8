"""The plan/observe path through the OpenSSH client (`reconciler/openssh.py`): a converged `plan`, `apply`,
`status` and `drift` import none of pyinfra, gevent, paramiko, deepdiff or psycopg (directory state); a saved plan
still applies; host keys stay strictly checked (a changed or absent key is refused before any command runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hosttools import CANARY, IMPORT_PROBE, Mini, _exec

from reconciler.openssh import OpenSSHSession, ssh_argv
from reconciler.spec.model import Host
from testhosts import TestHost

HEAVY = ("pyinfra", "gevent", "paramiko", "deepdiff", "psycopg")   # psycopg: only with a state URL


OTHER_RUNNERS = ("reconciler.runner.change", "reconciler.runner.day2", "reconciler.runner.statecmd")


def probe(m: Mini, *args: str, check: int = 0, heavy: tuple[str, ...] = HEAVY) -> tuple[list[str], str]:
    """Run a recon command in a process that reports which of the `heavy` modules it imported."""
    spec = m.write()
    argv = [sys.executable, "-c", IMPORT_PROBE.format(heavy=heavy), *args, "-f", str(spec),
            "--state", str(m.dir / "state")]
    env = {**os.environ, "VAULT_TOKEN": CANARY, "NO_COLOR": "1"}
    res = subprocess.run(argv, cwd=m.dir, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == check, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("HEAVY="), res.stderr
    return [x for x in last[len("HEAVY="):].split(",") if x], res.stdout


def test_ssh_argv_checks_host_keys_strictly_against_the_spec_files_only() -> None:
    h = Host("node1", "10.0.0.5", port=2222, user="root", ssh_key="/k/id", known_hosts="/k/known")
    argv = ssh_argv(h)
    opts = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "UserKnownHostsFile=/k/known",
            "GlobalKnownHostsFile=/dev/null", "UpdateHostKeys=no", "ControlPath=none",
            "IdentitiesOnly=yes"} <= opts, argv
    assert argv[-2:] == ["--", "10.0.0.5"] and argv[argv.index("-i"):argv.index("-i") + 2] == ["-i", "/k/id"]
    assert argv[argv.index("-p"):argv.index("-p") + 2] == ["-p", "2222"]
    assert argv[argv.index("-l"):argv.index("-l") + 2] == ["-l", "root"]


@pytest.mark.host
def test_a_converged_plan_apply_status_and_drift_import_no_pyinfra_gevent_paramiko_or_deepdiff(
        testhost: TestHost, tmp_path: Path, artifacts: Any) -> None:
    m = Mini(tmp_path, [testhost], artifacts)
    m.apply()
    heavy, out = probe(m, "plan", "--detailed-exitcode", heavy=HEAVY + OTHER_RUNNERS)   # nor other commands' types
    assert out.startswith("No changes."), out
    assert heavy == [], heavy
    # a converged apply takes the lock, settles its records and opens no pyinfra session: none of them either
    heavy, out = probe(m, "apply", "--auto-approve")
    assert out.startswith("No changes.") and heavy == [], (heavy, out)
    heavy, out = probe(m, "status")
    assert heavy == [] and "orchestrator" in out, (heavy, out)
    heavy, out = probe(m, "drift")
    assert heavy == [], (heavy, out)
    # a saved plan made on this path still applies (apply observes again, through pyinfra)
    heavy, _ = probe(m, "plan", "-o", str(tmp_path / "converged.plan"))
    assert heavy == []
    res = subprocess.run([sys.executable, "-m", "reconciler", "apply", str(tmp_path / "converged.plan"),
                          "--state", str(tmp_path / "state")], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "VAULT_TOKEN": CANARY, "NO_COLOR": "1"}, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    # a config that differs is diffed field by field: only then is deepdiff imported (and still no pyinfra)
    m.config_extra["orchestrator"] = {"feature": {"x": 1}}
    heavy, out = probe(m, "plan", "--detailed-exitcode", check=2)
    assert heavy == ["deepdiff"], heavy
    assert "config.feature" in " ".join(out.split()), out


@pytest.mark.host
def test_openssh_refuses_a_changed_or_unknown_host_key_before_running_anything(testhost: TestHost,
                                                                              tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"{testhost.address} {' '.join(other)}\n")
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    entry = testhost.spec_entry()
    marker = "/run/recon-openssh-logged-in"
    for known in (wrong, empty):
        h = Host("node1", entry["address"], user=entry.get("user"), ssh_key=entry.get("ssh_key"),
                 known_hosts=str(known))
        res = subprocess.run([*ssh_argv(h), f"touch {marker}"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
        assert res.returncode == 255 and "Host key verification failed" in res.stderr, res.stderr
        if known is wrong:
            assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in res.stderr, res.stderr
        assert _exec(testhost, f"ls {marker} 2>/dev/null") == ""
    # the session reports the mismatch as one (through pyinfra's connector, which refuses it too)
    h = Host("node1", entry["address"], user=entry.get("user"), ssh_key=entry.get("ssh_key"),
             known_hosts=str(wrong))
    with OpenSSHSession({"node1": h}) as s:
        res = s.run_many({"node1": f"touch {marker}"})
        assert res == {} and s.connected == [] and "HOST KEY MISMATCH" in s.errors["node1"], (res, s.errors)
    assert _exec(testhost, f"ls {marker} 2>/dev/null") == ""
    # and with the right known_hosts it gets in, in one command
    right = Host("node1", entry["address"], user=entry.get("user"), ssh_key=entry.get("ssh_key"),
                 known_hosts=entry.get("known_hosts"))
    with OpenSSHSession({"node1": right}) as s:
        res = s.run_many({"node1": "echo in"})
        assert res["node1"].ok and res["node1"].stdout == "in\n" and s.commands == {"node1": 1}, res
    # logged in early, the script goes to the waiting shell whole: a command in it that reads stdin
    # reads nothing of the rest; a second command opens its own ssh
    s = OpenSSHSession({"node1": right})
    s.open(early=True)
    try:
        res = s.run_many({"node1": "cat; echo after; exit 3"})
        assert not res["node1"].ok and res["node1"].stdout == "after\n", res
        assert s.run("node1", "echo again").stdout == "again\n" and s.commands == {"node1": 2}
    finally:
        s.close()
    # an early session never given a command ends its ssh at close
    s = OpenSSHSession({"node1": right})
    s.open(early=True)
    pending = list(s._pending.values())
    s.close()
    assert pending and all(p.returncode is not None for p in pending)
