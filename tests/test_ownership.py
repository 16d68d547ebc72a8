"""Ownership rules without a host: path checks, validation, accounts, the plan's resources and
refusals, state records, and the host-side guard/prune/delete scripts run by the shell on this machine
against a directory tree in tmp_path (docs/design.md, "Ownership")."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import ownership
from reconciler.errors import SpecError
from reconciler.observe import ObservedHost, Target, build_script, parse_output
from reconciler.ownership import Account, Owned, account_problem, group_problem, path_problem
from reconciler.plan import make_plan
from reconciler.spec import load_spec
from reconciler.state import ServiceRecord, State, StateStore

REPO = Path(__file__).resolve().parents[1]
SHA = "0" * 64


# --------------------------------------------------------------------------------------------- paths
@pytest.mark.parametrize("path, why", [
    ("/", "/ is a system directory"),
    ("/etc", "/etc is a system directory"),
    ("/tmp", "/tmp is a system directory"),
    ("/opt", "/opt is a system directory"),
    ("/usr/local", "/usr/local is a system directory"),
    ("/var/lib", "/var/lib is a system directory"),
    ("/lib64", "/lib64 is a system directory"),
    ("/usr/lib32", "/usr/lib32 is a system directory"),
    ("/etc/systemd/system", "/etc/systemd/system is a system directory"),
    ("/opt/../../etc", "not a normalised path"),
    ("/opt/provisioning/", "not a normalised path"),
    ("/opt//provisioning", "not a normalised path"),
    ("/opt/./provisioning", "not a normalised path"),
    ("opt/provisioning", "not an absolute path"),
    ("/proc/1", "/proc/1 is inside /proc, a kernel filesystem"),
    ("/sys/fs/x", "inside /sys"),
])
def test_paths_recon_cannot_own(path: str, why: str) -> None:
    problem = path_problem(path)
    assert problem is not None and why in problem, problem


@pytest.mark.parametrize("path", ["/opt/provisioning", "/etc/provisioning", "/var/lib/provisioning/orchestrator",
                                  "/opt/provisioning/etc", "/srv/www", "/home/app", "/usr/lib/provisioning",
                                  "/lib/recon", "/data", "/var/lib/provisioning"])
def test_paths_recon_can_own(path: str) -> None:
    assert path_problem(path) is None


def test_every_system_path_has_its_parents_listed() -> None:
    """The on-host guard refuses only the exact list: it must be closed under parents (`/usr/local` → `/usr`)."""
    for p in ownership.SYSTEM_PATHS:
        parent = os.path.dirname(p)
        assert parent in ownership.SYSTEM_PATHS or p == "/", p


# --------------------------------------------------------------------------------------------- validation
def _spec(tmp_path: Path, services: dict[str, dict[str, Any]]) -> Path:
    art = tmp_path / "art.bin"
    art.write_bytes(b"x")
    doc = {"version": 1, "hosts": {"node1": {"address": "10.0.0.1"}},
           "services": {n: {"version": "1", "artifact": {"path": str(art), "sha256": SHA}, **f}
                        for n, f in services.items()}}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def _problems(tmp_path: Path, services: dict[str, dict[str, Any]]) -> list[str]:
    p = _spec(tmp_path, services)
    try:
        load_spec([p], check_artifacts=False)
    except SpecError as exc:
        return [x.render() for x in exc.problems]
    return []


@pytest.mark.parametrize("name, fields, want", [
    # the observed cases
    ("etc", {"install_dir": "/"}, "services.etc.install_dir: install_dir cannot be recon's: / is a system directory"),
    ("web", {"data_dir": "/etc"}, "services.web.data_dir: data_dir cannot be recon's: /etc is a system directory"),
    ("web", {"config_dir": "/tmp"}, "services.web.config_dir: config_dir cannot be recon's: /tmp is a system"),
    ("web", {"install_dir": "/opt/../../etc"}, "services.web.install_dir: install_dir cannot be recon's: not a "
                                               "normalised path"),
    # more of the class
    ("web", {"install_dir": "/opt"}, "install_dir cannot be recon's: /opt is a system directory"),
    ("web", {"install_dir": "/var"}, "install_dir cannot be recon's: /var is a system directory"),
    ("web", {"data_dir": "/var/lib/{service}/../../log"}, "data_dir cannot be recon's: not a normalised path"),
    ("web", {"data_dir": "/home"}, "data_dir cannot be recon's: /home is a system directory"),
    ("web", {"config_dir": "/etc/systemd/system"}, "config_dir cannot be recon's: /etc/systemd/system is a system"),
    ("web", {"config_dir": "/etc/"}, "config_dir cannot be recon's: not a normalised path"),
    ("web", {"data_dir": "/opt/provisioning/web/data"}, "the service directory /opt/provisioning/web overlaps its "
                                                        "own data dir /opt/provisioning/web/data"),
    ("web", {"data_dir": "/etc/provisioning"}, "data_dir /etc/provisioning overlaps config_dir /etc/provisioning"),
    ("web", {"config_dir": "/opt/provisioning/web/etc"}, "overlaps its own config dir /opt/provisioning/web/etc"),
    ("web", {"user": "root"}, "services.web.user: the service cannot run as user root"),
    ("web", {"group": "root"}, "services.web.group: the service cannot run as group root"),
])
def test_validation_refuses_directories_recon_cannot_own(tmp_path: Path, name: str, fields: dict[str, Any],
                                                         want: str) -> None:
    problems = _problems(tmp_path, {name: fields})
    assert any(want in p for p in problems), problems
    assert all(p.startswith(f"{tmp_path / 'spec.yaml'}:") for p in problems), problems   # file:line


def test_one_service_directory_inside_another_is_refused(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {"a": {"install_dir": "/opt/apps"}, "b": {"install_dir": "/opt/apps/a"}})
    assert any("the service directory /opt/apps/a/b overlaps service 'a'" in p for p in problems) or any(
        "the service directory /opt/apps/a overlaps service 'b'" in p for p in problems), problems


def test_the_platform_spec_and_subdirectories_of_system_paths_stay_valid(tmp_path: Path) -> None:
    load_spec([REPO / "specs/platform.yaml", REPO / "specs/overrides/local.yaml"], check_artifacts=False)
    assert _problems(tmp_path, {"web": {"install_dir": "/srv/apps", "config_dir": "/etc/web",
                                        "data_dir": "/var/lib/web/{service}"},
                                "api": {}}) == []


def test_cli_validate_exits_1_with_file_and_line(tmp_path: Path) -> None:
    p = _spec(tmp_path, {"etc": {"install_dir": "/"}})
    res = subprocess.run([os.sys.executable, "-m", "reconciler", "validate", "-f", str(p)], capture_output=True,
                         text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=60)
    assert res.returncode == 1
    line = next(i for i, t in enumerate(p.read_text().splitlines(), 1) if "install_dir" in t)
    assert f"{p}:{line}:" in res.stderr and "services.etc.install_dir" in res.stderr, res.stderr


# --------------------------------------------------------------------------------------------- accounts
@pytest.mark.parametrize("line, why", [
    ("root:x:0:0:root:/root:/bin/bash", "account root has uid 0 (root)"),
    ("toor:x:0:0::/:/usr/sbin/nologin", "account toor has uid 0 (root)"),
    ("alice:x:1001:1001::/home/alice:/bin/bash", "account alice (uid 1001) is not a system account"),
    ("bob:x:1002:1002::/home/bob:/usr/sbin/nologin", "account bob (uid 1002) is not a system account"),
    ("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin", "(uid 65534) is not a system account"),
    ("pg:x:110:117::/var/lib/postgresql:/bin/bash", "account pg is a login account (shell /bin/bash)"),
    ("sh:x:120:120:::", "account sh is a login account (shell /bin/sh)"),
])
def test_accounts_recon_refuses(line: str, why: str) -> None:
    acct = Account.parse(line)
    assert acct is not None
    problem = account_problem(acct)
    assert problem is not None and why in problem, problem


@pytest.mark.parametrize("line", ["provisioning:x:998:998::/nonexistent:/usr/sbin/nologin",
                                  "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
                                  "svc:x:500:500::/:/bin/false"])
def test_system_accounts_are_used_as_they_are(line: str) -> None:
    acct = Account.parse(line)
    assert acct is not None and account_problem(acct) is None


def test_groups_with_gid_0_are_refused() -> None:
    assert group_problem("wheel2:x:0:") == "group wheel2 has gid 0 (root)"
    assert group_problem("provisioning:x:998:") is None


# --------------------------------------------------------------------------------------------- the plan
def _desired(tmp_path: Path, **fields: Any) -> Any:
    from reconciler.desired import desired_state

    spec = load_spec([_spec(tmp_path, {"web": fields})], check_artifacts=False)
    return desired_state(spec)


def _observed(accounts: dict[str, str], groups: dict[str, str], dirs: dict[str, str]) -> ObservedHost:
    return ObservedHost("node1", accounts=accounts, groups=groups, dirs=dirs, users=set(accounts))


def test_plan_lists_what_is_created_and_what_is_used_as_it_is(tmp_path: Path) -> None:
    desired = _desired(tmp_path, user="daemon", group="daemon", data_dir="/srv/webdata")
    obs = _observed({"daemon": "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin"}, {"daemon": "daemon:x:1:"},
                    {"/opt": "dir", "/etc": "dir", "/srv": "dir", "/srv/webdata": "dir"})
    plan = make_plan(desired, {"node1": obs}, State(), "salt")
    assert plan.refused == []
    got = [(r.kind, r.name, r.action) for r in plan.resources]
    assert got == [("directory", "/etc/provisioning", "create"), ("directory", "/opt/provisioning", "create"),
                   ("directory", "/opt/provisioning/web", "create"),
                   ("group", "daemon", "use"), ("account", "daemon", "use"),
                   ("directory", "/srv/webdata", "use")]
    assert all(r.services == ["web"] and r.host == "node1" for r in plan.resources)
    # once applied, what recon created is recon's: a later change lists only what is missing
    text = __import__("reconciler.render.text", fromlist=["render_text"]).render_text(plan, color=False)
    assert "+ node1: directory /opt/provisioning/web (will be created: root:root 755) — for web" in text
    assert "= node1: account daemon (exists: used as it is, never modified)" in text


def test_plan_refuses_login_and_uid_0_accounts_and_names_them(tmp_path: Path) -> None:
    for line, why in (("alice:x:1001:1001::/home/alice:/bin/bash", "alice (uid 1001) is not a system account"),
                      ("alice:x:0:0::/home/alice:/usr/sbin/nologin", "alice has uid 0")):
        desired = _desired(tmp_path, user="alice")
        plan = make_plan(desired, {"node1": _observed({"alice": line}, {}, {})}, State(), "salt")
        assert len(plan.refused) == 1 and plan.refused[0].startswith("node1/web: account " + why.split(" ")[0])
        assert why in plan.refused[0] and "never modifies an existing one" in plan.refused[0]
    from reconciler.render.jsonout import plan_document
    from reconciler.render.markdown import render_markdown
    from reconciler.render.text import render_text

    assert plan_document(plan)["refused"] == plan.refused
    assert "**Refused**" in render_markdown(plan) and "alice has uid 0" in render_markdown(plan)
    assert "Refused: 1 thing recon does not own or will not use" in render_text(plan, color=False)
    assert "- create: node1: account alice" not in render_markdown(plan)
    assert "- create: node1: directory /opt/provisioning " in render_markdown(plan)


def test_plan_refuses_a_hand_edited_record_for_a_delete() -> None:
    rec = ServiceRecord("1", SHA, "", "", None, "", "", "/etc", "/etc/provisioning/etc.toml",
                        "provisioning-etc.service", "/etc/provisioning/etc.env")
    state = State(hosts={"node1": {"etc": rec}})
    obs = ObservedHost("node1")
    obs.services["etc"] = __import__("reconciler.observe", fromlist=["ObservedService"]).ObservedService(
        "etc", current="1")
    plan = make_plan({"node1": {}}, {"node1": obs}, state, "salt")
    assert [c.action for c in plan.changes] == ["delete"]
    assert plan.refused == ["node1/etc: not deleting it: its recorded service directory is unsafe: /etc is a system "
                            "directory (was recon's state edited by hand?)"]
    for bad in ({"config_path": "/etc/passwd"}, {"env_path": "/etc/shadow"}, {"service_dir": "/opt/x/other"},
                {"unit_name": "ssh.service"}):
        assert ownership.record_problem("etc", dataclasses.replace(rec, **{"service_dir": "/opt/p/etc", **bad})) \
            is not None, bad
    assert ownership.record_problem("etc", dataclasses.replace(rec, service_dir="/opt/p/etc")) is None


# --------------------------------------------------------------------------------------------- state
def test_state_keeps_what_recon_created(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rec = ServiceRecord("1", SHA, "", "", None, "", "", "/opt/p/web", "/etc/p/web.toml", "provisioning-web.service",
                        "/etc/p/web.env", created_dirs=["/opt/p/web", "/opt/p/web/releases"])
    legacy = dataclasses.replace(rec, created_dirs=None)
    st = State(hosts={"n": {"web": rec, "old": legacy}},
               owned={"n": [Owned("user", "provisioning", "account", ["web"]), Owned("dir", "/etc/p", "shared", [])]})
    store.save(st)
    back = store.load()
    assert back.owned == st.owned and back.hosts["n"]["web"].created_dirs == rec.created_dirs
    assert back.hosts["n"]["old"].created_dirs is None      # recorded before ownership: stays unknown
    owned = back.owned["n"]
    ownership.use(owned, "dir", "/etc/p", "shared", "api")
    assert ownership.release(owned, "web") == [] and [o.services for o in owned] == [[], ["api"]]
    assert ownership.release(owned, "api") == [owned[1]]    # a shared dir nobody uses any more


# --------------------------------------------------------------------------------------------- host scripts
def _sh(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", script, "sh", *args], capture_output=True, text=True, timeout=30)


def test_guard_refuses_links_paths_that_resolve_elsewhere_and_system_paths(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "via").symlink_to(tmp_path)
    guard = ownership.guard_prelude()
    assert _sh(guard + 'guard "$1" strict && echo ok', str(real)).stdout == "ok\n"
    res = _sh(guard + 'guard "$1"', str(tmp_path / "link"))
    assert res.returncode == 3 and "is a symbolic link" in res.stderr
    res = _sh(guard + 'guard "$1" strict', str(tmp_path / "via" / "real"))
    assert res.returncode == 3 and f"resolves to {real}" in res.stderr
    assert _sh(guard + 'guard "$1" && echo ok', str(tmp_path / "via" / "real")).stdout == "ok\n"   # not strict
    for system in ("/etc", "/usr", "/", "/lib64", "/proc/1"):
        res = _sh(guard + 'guard "$1"', system)
        assert res.returncode == 3 and "refused:" in res.stderr, system
    assert _sh(guard + 'guard "$1" && echo ok', "/usr/lib/os-release/..").returncode != 0


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    sd = tmp_path / "opt" / "web"
    for v in ("1.0", "2.0", "3.0"):
        (sd / "releases" / v).mkdir(parents=True)
        (sd / "releases" / v / "web").write_text(v)
    (sd / "current").symlink_to("releases/3.0")
    old = sd / "releases" / "0.1"
    old.symlink_to(victim)
    os.utime(old, (0, 0), follow_symlinks=False)            # the oldest "release": pruned first
    for i, v in enumerate(("1.0", "2.0", "3.0"), 1):
        os.utime(sd / "releases" / v, (i * 1000, i * 1000))
    return sd, victim


def test_prune_removes_links_not_what_they_point_at(tmp_path: Path) -> None:
    sd, victim = _tree(tmp_path)
    res = _sh(ownership.prune_script(str(sd), {"3.0"}, 1))
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(sd / "releases")) == ["3.0"]
    assert (victim / "precious").read_text() == "keep"


def test_prune_does_not_enter_a_releases_link(tmp_path: Path) -> None:
    sd, victim = _tree(tmp_path)
    (sd / "releases").rename(tmp_path / "moved")
    (sd / "releases").symlink_to(victim)
    res = _sh(ownership.prune_script(str(sd), {"3.0"}, 0))
    assert res.returncode == 3 and "is a symbolic link" in res.stderr
    assert (victim / "precious").read_text() == "keep"


def _record(sd: Path, created: list[str] | None) -> ServiceRecord:
    cfg = sd.parent.parent / "etc"
    cfg.mkdir(exist_ok=True)
    (cfg / "web.toml").symlink_to(sd / "current" / "web.toml")
    (cfg / "web.env").write_text("A=1\n")
    return ServiceRecord("3.0", SHA, "", "", None, "", "", str(sd), str(cfg / "web.toml"),
                         "provisioning-recon-unit-test-none.service", str(cfg / "web.env"), created_dirs=created)


def _delete(script: str) -> subprocess.CompletedProcess[str]:
    return _sh("systemctl() { :; }\n" + script)          # no unit to stop on this machine


@pytest.mark.parametrize("created", [["SD", "SD/releases"], None])   # recorded, or a record from before
def test_delete_removes_what_recon_created_and_no_link_target(tmp_path: Path, created: list[str] | None) -> None:
    sd, victim = _tree(tmp_path)
    rec = _record(sd, [c.replace("SD", str(sd)) for c in created] if created else None)
    shared = tmp_path / "opt"
    res = _delete(ownership.delete_script("web", rec, [str(shared)]))
    assert res.returncode == 0, res.stderr
    assert not sd.exists() and not os.path.lexists(rec.config_path) and not os.path.exists(rec.env_path)
    assert f"REMOVED\tdir\t{shared}" in res.stdout and not shared.exists()     # empty and unused: removed
    assert (victim / "precious").read_text() == "keep"


def test_delete_keeps_a_service_dir_recon_did_not_create_or_that_holds_other_files(tmp_path: Path) -> None:
    sd, victim = _tree(tmp_path)
    rec = _record(sd, [])                                   # recon found the dir and `releases` there
    res = _delete(ownership.delete_script("web", rec, []))
    assert res.returncode == 0, res.stderr
    assert f"KEPT\tdir\t{sd}" in res.stdout and sorted(os.listdir(sd)) == ["releases"]
    rec2 = dataclasses.replace(rec, created_dirs=[str(sd)])
    (sd / "notes.txt").write_text("someone's")
    (sd / "current").symlink_to("releases/3.0")
    res = _delete(ownership.delete_script("web", rec2, []))
    assert f"KEPT\tdir\t{sd}" in res.stdout and sorted(os.listdir(sd)) == ["notes.txt"]
    assert (victim / "precious").read_text() == "keep"


def test_delete_refuses_a_service_dir_that_is_a_link_before_touching_anything(tmp_path: Path) -> None:
    sd, victim = _tree(tmp_path)
    rec = _record(sd, [str(sd)])
    (sd.parent / "web.real").mkdir()
    sd.rename(sd.parent / "web.real" / "web")
    sd.symlink_to(victim)
    res = _delete(ownership.delete_script("web", rec, []))
    assert res.returncode == 3 and "is a symbolic link" in res.stderr
    assert os.path.lexists(rec.config_path) and os.path.exists(rec.env_path)   # nothing touched
    assert (victim / "precious").read_text() == "keep"


# --------------------------------------------------------------------------------------------- observation
def test_observation_reports_directories_and_groups_with_builtins(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "f").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    paths = tuple(str(tmp_path / n) for n in ("a", "f", "dangling", "missing"))
    t = [Target("web", str(tmp_path / "opt"), str(tmp_path / "web.toml"), "provisioning-recon-test-none.service",
                str(tmp_path / "web.env"), user="root", group="root", dirs=paths)]
    script = build_script(t, "salt")
    res = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30, check=True)
    obs = parse_output("n", res.stdout, t)
    assert obs.dirs == {paths[0]: "dir", paths[1]: "other", paths[2]: "other"}
    assert obs.groups["root"].startswith("root:x:0:") and obs.accounts["root"].startswith("root:x:0:0:")
