"""Hostile specs and hand edits on a real systemd host (systemd-nspawn, real SSH, the recon CLI): recon
changes only what it created and recorded (docs/design.md, "Ownership").

One host serves every case of this file, in order; after each case the host's invariants are checked
(`hosttools.check_invariants`: owner and mode of /etc, /tmp, /var, /root and /usr, the account entries
that existed before, sshd, nothing changed outside recon's recorded directories).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hosttools import _run_in, check_invariants, recon, recon_paths, snapshot

from testhosts import TestHost, TestHosts


@pytest.fixture(scope="module")
def host(testhosts_pool: TestHosts, _testhost_indices: Any) -> Iterator[TestHost]:
    """One host for the whole file (booting is what costs)."""
    indices = _testhost_indices.take(testhosts_pool, 1)
    try:
        (h,) = testhosts_pool.up(indices)
    except Exception as exc:   # a host that cannot boot fails the tests, never skips them
        pytest.fail(f"test host failed to boot: {exc}", pytrace=False)
    yield h
    testhosts_pool.down(indices)


class Spec:
    """A spec of stand-in services (the orchestrator artifact) on the one host, CLI runs against it."""

    def __init__(self, tmp: Path, host: TestHost, artifacts: Any) -> None:
        self.dir, self.host = tmp, host
        self.path, self.sha = artifacts[("orchestrator", "5.0.0")]
        self.services: dict[str, dict[str, Any]] = {}
        self.state = tmp / "state"

    def add(self, name: str, port: int, **fields: Any) -> None:
        self.services[name] = {"version": "5.0.0", "artifact": {"path": str(self.path), "sha256": self.sha},
                               "port": port, "config": {"server": {"port": port}}, **fields}

    def write(self) -> Path:
        doc = {"version": 1, "hosts": {"node1": self.host.spec_entry()},
               "defaults": {"type": "notify", "args": ["--config", "{config_path}"],
                            "health": {"http": "http://{address}:{port}/health", "timeout_s": 10, "interval_s": 0.2},
                            "config": {"server": {"host": "{address}"}}},
               "services": self.services}
        p = self.dir / "spec.yaml"
        p.write_text(yaml.safe_dump(doc, sort_keys=False))
        return p

    def run(self, *args: str, check: int | None = None) -> Any:
        state = () if args[0] == "validate" else ("--state", str(self.state))
        return recon(*args, "-f", str(self.write()), *state, cwd=self.dir, check=check)

    def apply(self, check: int | None = 0) -> Any:
        return self.run("apply", "--auto-approve", check=check)

    def state_doc(self) -> dict[str, Any]:
        return json.loads((self.state / "recon.state.json").read_text())


def sh(host: TestHost, cmd: str) -> str:
    res = _run_in(host, cmd)
    assert res.returncode == 0, (cmd, res.stderr)
    return res.stdout


def stat(host: TestHost, path: str) -> str:
    return sh(host, f"stat -c '%U:%G %a %F' {path}").strip()


def test_the_invariant_check_sees_what_changed(host: TestHost) -> None:
    """The check itself can fail: a file written, a mode changed, an account entry changed."""
    before = snapshot(host)
    for damage, undo in (("touch /etc/probe", "rm /etc/probe"), ("chmod 0755 /tmp", "chmod 1777 /tmp"),
                         ("chsh -s /bin/sh daemon", "chsh -s /usr/sbin/nologin daemon"),
                         ("mkdir /srv/x", "rmdir /srv/x"), ("chmod 0700 /srv", "chmod 0755 /srv")):
        sh(host, damage)
        try:
            check_invariants(host, before)
        except AssertionError:
            pass
        else:
            pytest.fail(f"the invariant check did not see: {damage}")
        sh(host, undo)
    check_invariants(host, before)


def test_specs_naming_what_recon_does_not_own_are_refused_and_touch_nothing(
        host: TestHost, tmp_path: Path, artifacts: Any) -> None:
    before = snapshot(host)
    # rejected when validating: file:line, the spec path, exit 1, no host touched
    cases = [
        ("etc", {"install_dir": "/"}, "services.etc.install_dir: install_dir cannot be recon's: / is a system"),
        ("web", {"data_dir": "/etc"}, "services.web.data_dir: data_dir cannot be recon's: /etc is a system"),
        ("web", {"config_dir": "/tmp"}, "services.web.config_dir: config_dir cannot be recon's: /tmp is a system"),
        ("web", {"install_dir": "/opt/../../etc"}, "install_dir cannot be recon's: not a normalised path"),
        ("web", {"install_dir": "/usr"}, "install_dir cannot be recon's: /usr is a system directory"),
        ("web", {"data_dir": "/var/lib"}, "data_dir cannot be recon's: /var/lib is a system directory"),
        ("web", {"data_dir": "/var/lib/"}, "data_dir cannot be recon's: not a normalised path"),
        ("web", {"install_dir": "/usr/local"}, "install_dir cannot be recon's: /usr/local is a system"),
        ("web", {"data_dir": "/opt/provisioning/web/data"}, "the service directory /opt/provisioning/web overlaps "
                                                            "its own data dir /opt/provisioning/web/data"),
        ("web", {"user": "root"}, "services.web.user: the service cannot run as user root"),
        ("web", {"group": "root"}, "services.web.group: the service cannot run as group root"),
    ]
    for name, fields, message in cases:
        s = Spec(tmp_path, host, artifacts)
        s.add(name, 8090, **fields)
        spec_file = s.write()
        for cmd in (("validate",), ("plan",), ("apply", "--auto-approve")):
            res = s.run(*cmd)
            assert res.returncode == 1, (fields, cmd, res.stdout, res.stderr)
            assert message in res.stderr and f"{spec_file}:" in res.stderr, (fields, res.stderr)
        check_invariants(host, before)
    assert not (tmp_path / "state" / "recon.state.json").exists()


def test_accounts_recon_does_not_own_are_refused_at_plan_time_and_never_modified(
        host: TestHost, tmp_path: Path, artifacts: Any) -> None:
    sh(host, "useradd -m -s /bin/bash alice && useradd -o -u 0 -s /usr/sbin/nologin -M toor "
             "&& useradd --system -s /bin/bash -M sysbash && groupadd -o -g 0 rootish && touch /srv/afile")
    before = snapshot(host)
    cases = [
        ({"user": "alice"}, "account alice (uid 100"),          # a login account (uid >= 1000, bash)
        ({"user": "toor"}, "account toor has uid 0 (root)"),
        ({"user": "sysbash"}, "account sysbash is a login account (shell /bin/bash)"),
        ({"user": "nobody"}, "account nobody (uid 65534) is not a system account"),
        ({"group": "rootish"}, "group rootish has gid 0 (root)"),
        ({"data_dir": "/srv/afile"}, "/srv/afile exists and is not a directory"),
    ]
    for fields, message in cases:
        s = Spec(tmp_path, host, artifacts)
        s.add("web", 8090, **fields)
        plan = s.run("plan")
        assert plan.returncode == 1 and "Refused:" in plan.stdout and message in plan.stdout, (fields, plan.stdout)
        doc = json.loads(s.run("plan", "--format", "json").stdout)
        assert any(message in r for r in doc["refused"]), doc["refused"]
        res = s.apply(check=1)
        assert "not applying: recon refuses part of this plan" in res.stderr, res.stderr
        assert sh(host, "ls /opt /etc/systemd/system").count("provisioning") == 0
        check_invariants(host, before)


def test_apply_creates_and_records_what_is_missing_and_delete_removes_only_that(
        host: TestHost, tmp_path: Path, artifacts: Any) -> None:
    # web runs as an existing system account (daemon) with a data dir someone else made; api gets the
    # defaults (account provisioning, /opt/provisioning, /etc/provisioning, /var/lib/provisioning/api)
    sh(host, "mkdir -m 0755 /srv/webdata && echo keep > /srv/webdata/file")
    daemon = sh(host, "getent passwd daemon")
    before = snapshot(host)
    s = Spec(tmp_path, host, artifacts)
    s.add("web", 8091, user="daemon", group="daemon", data_dir="/srv/webdata", install_dir="/opt/webapps",
          config_dir="/etc/webcfg")
    s.add("api", 8092)
    doc = json.loads(s.run("plan", "--format", "json", check=0).stdout)
    res = {(r["kind"], r["name"]): r["action"] for r in doc["resources"]}
    assert res[("account", "provisioning")] == "create" and res[("group", "provisioning")] == "create"
    assert res[("account", "daemon")] == "use" and res[("group", "daemon")] == "use"
    assert res[("directory", "/srv/webdata")] == "use"
    for d in ("/opt/webapps", "/opt/webapps/web", "/etc/webcfg", "/opt/provisioning", "/opt/provisioning/api",
              "/etc/provisioning", "/var/lib/provisioning", "/var/lib/provisioning/api"):
        assert res[("directory", d)] == "create", d
    assert ("directory", "/etc") not in res and ("directory", "/opt") not in res   # system dirs: not listed
    text = s.run("plan", check=0).stdout
    assert "Accounts and directories:" in text
    assert "+ node1: account provisioning (will be created: system user" in text
    assert "= node1: directory /srv/webdata (exists: used as it is, owner and mode kept)" in text

    s.apply()
    assert stat(host, "/srv/webdata") == "root:root 755 directory"
    assert sh(host, "getent passwd daemon") == daemon
    prov = sh(host, "getent passwd provisioning").strip().split(":")
    assert int(prov[2]) < 1000 and prov[5:] == ["/nonexistent", "/usr/sbin/nologin"]
    assert stat(host, "/var/lib/provisioning/api") == "provisioning:provisioning 750 directory"
    st = s.state_doc()
    owned = {(o["kind"], o["name"]): o["services"] for o in st["owned"]["node1"]}
    assert owned[("user", "provisioning")] == ["api"] and ("user", "daemon") not in owned
    assert owned[("dir", "/etc/webcfg")] == ["web"] and owned[("dir", "/var/lib/provisioning/api")] == ["api"]
    assert ("dir", "/srv/webdata") not in owned and ("dir", "/opt") not in owned
    assert st["hosts"]["node1"]["web"]["created_dirs"] == ["/opt/webapps/web", "/opt/webapps/web/releases"]
    allowed = recon_paths(s.state)
    check_invariants(host, before, allowed, new_accounts={"provisioning"})
    assert "No changes" in s.apply().stdout

    # delete web: its service dir and the dirs only it used go; the data dir someone else made stays as it was
    del s.services["web"]
    res2 = s.apply()
    assert "node1/web: deleted" in res2.stdout, res2.stdout
    gone = sh(host, "for p in /opt/webapps /etc/webcfg /etc/systemd/system/provisioning-web.service; do "
                    "[ -e $p ] && echo $p; done; true")
    assert gone == ""
    assert stat(host, "/srv/webdata") == "root:root 755 directory"
    assert sh(host, "cat /srv/webdata/file") == "keep\n"
    assert sh(host, "getent passwd daemon") == daemon
    owned = {(o["kind"], o["name"]) for o in s.state_doc()["owned"]["node1"]}
    assert ("dir", "/etc/webcfg") not in owned and ("dir", "/opt/webapps") not in owned
    check_invariants(host, before, allowed, new_accounts={"provisioning"})


def test_delete_and_prune_refuse_paths_outside_what_recon_recorded(
        host: TestHost, tmp_path: Path, artifacts: Any) -> None:
    s = Spec(tmp_path, host, artifacts)
    s.add("api", 8092)
    s.add("victim", 8093)
    s.apply()
    before = snapshot(host)
    allowed = recon_paths(s.state)
    etc_before = sh(host, "ls -A /etc | sort")

    # 1. a hand-edited state points the service dir of a removed service at /etc: refused before any command
    state = s.state_doc()
    state["hosts"]["node1"]["etc"] = dict(state["hosts"]["node1"]["victim"], service_dir="/etc",
                                          config_path="/etc/provisioning/etc.toml",
                                          env_path="/etc/provisioning/etc.env", unit_name="provisioning-etc.service")
    (s.state / "recon.state.json").write_text(json.dumps(state))
    sh(host, "cp /etc/systemd/system/provisioning-victim.service /etc/systemd/system/provisioning-etc.service")
    plan = s.run("plan")
    assert plan.returncode == 1 and "node1/etc: not deleting it: its recorded service directory is unsafe: /etc is " \
                                    "a system directory" in plan.stdout, plan.stdout
    s.apply(check=1)
    assert sh(host, "ls -A /etc | sort") == etc_before
    sh(host, "rm /etc/systemd/system/provisioning-etc.service")
    check_invariants(host, before, allowed)

    # 2. the service dir of a removed service replaced by a symlink to /etc on the host: the host-side guard
    #    refuses (the path passes every check in recon; only the host knows where it leads)
    del state["hosts"]["node1"]["etc"]
    (s.state / "recon.state.json").write_text(json.dumps(state))
    del s.services["victim"]
    sh(host, "mv /opt/provisioning/victim /opt/provisioning/victim.real && ln -s /etc /opt/provisioning/victim")
    res = s.apply(check=1)
    assert "refused: /opt/provisioning/victim is a symbolic link" in res.stdout, res.stdout
    assert sh(host, "ls -A /etc | sort") == etc_before
    assert sh(host, "systemctl is-active provisioning-victim.service").strip() == "active"   # not even stopped

    # 3. a symlink on the way: a hand-edited record whose path passes every check in recon but leads to
    #    /etc through /opt/evil -> / on the host; the host-side guard resolves it and refuses
    sh(host, "ln -s / /opt/evil && cp /etc/systemd/system/provisioning-victim.service "
             "/etc/systemd/system/provisioning-etc.service")
    state = s.state_doc()
    state["hosts"]["node1"]["etc"] = dict(state["hosts"]["node1"]["victim"], service_dir="/opt/evil/etc",
                                          config_path="/etc/provisioning/etc.toml",
                                          env_path="/etc/provisioning/etc.env", unit_name="provisioning-etc.service")
    (s.state / "recon.state.json").write_text(json.dumps(state))
    res = s.apply(check=1)
    assert "refused: /opt/evil/etc resolves to /etc" in res.stdout, res.stdout
    assert sh(host, "ls -A /etc | sort") == etc_before
    del state["hosts"]["node1"]["etc"]
    (s.state / "recon.state.json").write_text(json.dumps(state))
    sh(host, "rm /opt/evil /etc/systemd/system/provisioning-etc.service /opt/provisioning/victim && "
             "mv /opt/provisioning/victim.real /opt/provisioning/victim")

    # 4. symlinks planted inside the service dir: deleting removes the links, never what they point at
    sh(host, "ln -s /etc /opt/provisioning/victim/releases/0.0.1 && touch -h -d 2000-01-01 "
             "/opt/provisioning/victim/releases/0.0.1 && ln -s /root /opt/provisioning/victim/evil-link")
    res = s.apply()
    assert "node1/victim: deleted" in res.stdout and "kept /opt/provisioning/victim" in res.stdout, res.stdout
    assert sh(host, "ls -A /opt/provisioning/victim") == "evil-link\n"    # what recon did not put there stays
    assert sh(host, "ls -A /etc | sort") == etc_before and sh(host, "ls -A /root")
    sh(host, "rm -r /opt/provisioning/victim")

    # 5. prune follows no symlink: an old "release" that is a link to /etc is removed as a link
    s.services["api"]["keep_releases"] = 1
    sh(host, "ln -s /etc /opt/provisioning/api/releases/0.0.1 && touch -h -d 2000-01-01 "
             "/opt/provisioning/api/releases/0.0.1")
    s.services["api"]["config"]["server"]["workers"] = 2
    s.apply()
    assert sh(host, "ls /opt/provisioning/api/releases") == "5.0.0\n"
    assert sh(host, "ls -A /etc | sort") == etc_before
    # ... and a `releases` dir that is a link is not entered at all
    sh(host, "mv /opt/provisioning/api/releases /opt/provisioning/api/releases.real && mkdir /opt/decoy && "
             "touch -d 2000-01-01 /opt/decoy/old && ln -s /opt/decoy /opt/provisioning/api/releases")
    s.services["api"]["config"]["server"]["workers"] = 3
    s.apply(check=1)
    assert sh(host, "ls /opt/decoy") == "old\n"
    sh(host, "rm /opt/provisioning/api/releases && mv /opt/provisioning/api/releases.real "
             "/opt/provisioning/api/releases && rm -r /opt/decoy")
    check_invariants(host, before, allowed | recon_paths(s.state))
