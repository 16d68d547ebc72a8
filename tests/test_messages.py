"""Issue 7 section 5, the parts that need no host: a bad `ssh_key`, a state file of the wrong shape, a
damaged history file. Each is a clear error (or a warning for skipped history lines), never a traceback.
Driven through the CLI in a subprocess, like an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.state import StateError, StateStore

SHA = "a" * 64


def recon(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "reconciler", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=120)


def _spec(tmp_path: Path, ssh_key: str) -> Path:
    artifact = tmp_path / "api.bin"
    artifact.write_bytes(b"x")
    import hashlib

    path = tmp_path / "spec.yaml"
    path.write_text(f"""\
version: 1
hosts:
  node1:
    address: 127.0.0.254
    port: 1
    ssh_key: {ssh_key}
    known_hosts: {tmp_path / "known_hosts"}
services:
  api:
    version: "1.0.0"
    artifact: {{path: api.bin, sha256: {hashlib.sha256(b"x").hexdigest()}}}
""")
    return path


def _no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stderr + res.stdout and "Greenlet" not in res.stderr, res.stderr


# ---------------------------------------------------------------- ssh_key


@pytest.mark.parametrize("command", [["plan"], ["status"], ["apply", "--auto-approve"]])
def test_missing_ssh_key_is_an_error_at_its_line_before_connecting(tmp_path, command):
    spec = _spec(tmp_path, str(tmp_path / "no-such-key"))
    res = recon(*command, "-f", str(spec), "--state", str(tmp_path / "state"), cwd=tmp_path)
    assert res.returncode == 1
    _no_traceback(res)
    assert f"{spec}:6:5: hosts.node1.ssh_key: ssh_key file {tmp_path / 'no-such-key'} does not exist" in res.stderr
    assert not (tmp_path / "state" / "recon.state.json").exists()  # nothing recorded, no host contacted


def test_ssh_key_that_is_a_directory(tmp_path):
    spec = _spec(tmp_path, str(tmp_path))
    res = recon("plan", "-f", str(spec), "--state", str(tmp_path / "state"), cwd=tmp_path)
    assert res.returncode == 1 and "is a directory, not a private key file" in res.stderr
    _no_traceback(res)


def test_validate_does_not_need_the_ssh_key(tmp_path):
    """`recon validate` runs in CI, where the operators' keys are not."""
    spec = _spec(tmp_path, str(tmp_path / "no-such-key"))
    res = recon("validate", "-f", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stderr


def test_unusable_key_file_is_a_host_error_without_a_greenlet_traceback(tmp_path):
    """A key file that exists but is no key passes the early check; pyinfra refuses it in a greenlet."""
    key = tmp_path / "empty-key"
    key.write_text("")
    spec = _spec(tmp_path, str(key))
    res = recon("plan", "-f", str(spec), "--state", str(tmp_path / "state"), cwd=tmp_path)
    assert res.returncode == 1
    _no_traceback(res)
    assert "cannot connect to host 'node1'" in res.stdout + res.stderr
    assert "private key file" in res.stdout + res.stderr


# ---------------------------------------------------------------- state file of the wrong shape

RECORD = {"version": "1.0.0", "sha256": SHA, "config_sha": SHA, "unit_sha": SHA, "env_hash": None,
          "config_text": "", "unit_text": "", "service_dir": "/opt/p/api", "config_path": "/etc/p/api.toml",
          "unit_name": "provisioning-api.service", "env_path": "/etc/p/api.env"}


@pytest.mark.parametrize(("doc", "says"), [
    ([1, 2], "the top level must be an object, found a list"),
    ({"format_version": 1, "hosts": []}, "hosts: expected an object of hosts, found a list"),
    ({"hosts": []}, "format_version: missing (expected 1); hosts: expected an object of hosts"),
    ({"format_version": 1, "hosts": {"node1": [1]}}, "hosts.node1: expected an object of services, found a list"),
    ({"format_version": 1, "hosts": {"node1": {"api": "x"}}},
     'hosts.node1.api: expected a service record (an object), found a string "x"'),
    ({"format_version": 1, "hosts": {"node1": {"api": {**RECORD, "version": 5}}}},
     "hosts.node1.api.version: expected a string, found a number 5"),
    ({"format_version": 1, "hosts": {"node1": {"api": {k: v for k, v in RECORD.items() if k != "unit_sha"}}}},
     "hosts.node1.api.unit_sha: missing (expected a string)"),
    ({"format_version": 1, "hosts": {"node1": {"api": {**RECORD, "depends_on": "db"}}}},
     'hosts.node1.api.depends_on: expected a list of strings, found a string "db"'),
    ({"format_version": 1, "serial": "7", "hosts": {}}, 'serial: expected a whole number, found a string "7"'),
    ({"format_version": 1, "serial": True, "hosts": {}}, "serial: expected a whole number, found a boolean"),
    ("just text", 'the top level must be an object, found a string "just text"'),
    (None, "the top level must be an object, found null"),
])
def test_state_file_of_the_wrong_shape_says_what_and_where(tmp_path, doc, says):
    state = tmp_path / "state"
    state.mkdir()
    (state / "recon.state.json").write_text(json.dumps(doc))
    with pytest.raises(StateError) as info:
        StateStore(state).load()
    assert says in str(info.value) and "recon.state.json" in str(info.value)
    spec = _spec(tmp_path, str(tmp_path / "spec.yaml"))  # any readable file passes the early key check
    res = recon("plan", "-f", str(spec), "--state", str(state), cwd=tmp_path)
    assert res.returncode == 1
    _no_traceback(res)
    assert says in res.stderr


def test_a_good_state_file_still_loads(tmp_path):
    (tmp_path / "recon.state.json").write_text(json.dumps(
        {"format_version": 1, "serial": 3, "lineage": "l", "hosts": {"node1": {"api": RECORD}}}))
    st = StateStore(tmp_path).load()
    assert st.serial == 3 and st.record("node1", "api").version == "1.0.0"  # type: ignore[union-attr]


def test_state_file_that_is_not_utf8_or_a_directory(tmp_path):
    (tmp_path / "recon.state.json").write_bytes(b'{"format_version": 1, "lineage": "\xff"}')
    with pytest.raises(StateError, match="not valid JSON"):
        StateStore(tmp_path).load()
    (tmp_path / "recon.state.json").unlink()
    (tmp_path / "recon.state.json").mkdir()
    with pytest.raises(StateError, match="cannot read state file"):
        StateStore(tmp_path).load()


def test_lock_file_holding_a_list_is_unreadable_not_a_crash(tmp_path):
    (tmp_path / "recon.lock").write_text("[1, 2]")
    assert StateStore(tmp_path).lock_holder() == {"id": "?", "note": "unreadable lock file"}


# ---------------------------------------------------------------- history

GOOD = {"time": "2026-01-02T03:04:05.000000Z", "user": "ops", "machine": "m", "command": "apply", "serial": 4,
        "host": "node1", "service": "api", "action": "create", "from": None, "to": "1.0.0", "result": "created",
        "detail": ""}


def test_history_skips_lines_it_cannot_read_and_says_so(tmp_path):
    lines = [json.dumps(GOOD).encode(), b"\xff\xfe not utf-8", b"[1, 2]", json.dumps({**GOOD, "time": 5}).encode(),
             json.dumps({**GOOD, "to": "1.0.1", "serial": 5}).encode(), b'{"cut by a cra']
    (tmp_path / "history.jsonl").write_bytes(b"\n".join(lines))
    res = recon("history", "--state", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0
    _no_traceback(res)
    rows = [line for line in res.stdout.splitlines() if "node1/api" in line]
    assert len(rows) == 2 and "1.0.0" in rows[0] and "1.0.1" in rows[1]
    assert res.stderr.startswith(f"Warning: skipped 4 unreadable lines of {tmp_path / 'history.jsonl'} (")
    for part in ("line 2: not UTF-8 text", "line 3: not a history entry (found a list)",
                 "line 4: time is a number 5, not text", "line 6: not JSON"):
        assert part in res.stderr
    as_json = recon("history", "--state", str(tmp_path), "--format", "json", cwd=tmp_path)
    assert as_json.returncode == 0 and len(json.loads(as_json.stdout)) == 2  # stdout stays pure JSON
    assert "skipped 4" in as_json.stderr
    one = recon("history", "api", "--state", str(tmp_path), cwd=tmp_path)
    assert one.returncode == 0 and len([line for line in one.stdout.splitlines() if "node1/api" in line]) == 2


def test_history_without_bad_lines_prints_no_warning(tmp_path):
    (tmp_path / "history.jsonl").write_text(json.dumps(GOOD) + "\n")
    res = recon("history", "--state", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "" and "node1/api" in res.stdout
