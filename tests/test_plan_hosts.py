"""`recon plan` against real systemd test hosts over SSH, run as a user runs it (the CLI in a subprocess).

Hosts that should match the spec are set up BY HAND (release dir, binary, config, unit, symlinks, env
file, useradd, daemon-reload, systemctl enable --now through the harness's ssh), never with `recon
apply`, so the plan is checked against an independent install. Where a test needs "what recon
applied", it writes the state the way apply does (StateStore.save with ServiceRecords).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.desired import DesiredService, desired_state
from reconciler.spec import load_spec
from reconciler.state import ServiceRecord, StateStore, now_iso
from testhosts import TestHost, TestHosts

pytestmark = pytest.mark.host

CANARY = "canary-plan-7Hq2xW-never-shown"
# service → (version, port, depends_on)
SERVICES: dict[str, tuple[str, int, list[str]]] = {
    "orchestrator": ("5.0.0", 8080, []),
    "vault-service": ("4.0.0", 8085, ["orchestrator"]),
    "control-center": ("5.0.0", 8081, ["orchestrator", "vault-service"]),
}
ORDER = ["orchestrator", "vault-service", "control-center"]
UNIT = "provisioning-{}.service"
COUNT_LOG = "/run/recon-ssh-commands.log"

MakeTestHosts = Callable[[int], list[TestHost]]
HostsSpec = Callable[..., dict[str, dict[str, object]]]
Artifacts = dict[str, tuple[Path, str]]


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def plan_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """The stand-in artifacts of the small spec, built once: service → (path, sha256)."""
    out = tmp_path_factory.mktemp("plan-artifacts")
    args = [a for name in ORDER for a in ("--service", name, "--version", SERVICES[name][0])]
    res = subprocess.run([sys.executable, "-m", "reconciler.standin.build", "--out", str(out), *args],
                         capture_output=True, text=True, timeout=60, check=True)
    built: Artifacts = {}
    for line in res.stdout.splitlines():
        sha, path = line.split(maxsplit=1)
        name = Path(path).name.rsplit("-", 1)[0]
        built[name] = (Path(path), sha)
    assert sorted(built) == sorted(ORDER), res.stdout
    return built


def spec_doc(hosts: dict[str, dict[str, object]], artifacts: Artifacts) -> dict[str, Any]:
    """A small spec: three services with depends_on, short health timeouts, a secret from the env."""
    services: dict[str, Any] = {}
    for name in ORDER:
        version, port, deps = SERVICES[name]
        path, sha = artifacts[name]
        svc: dict[str, Any] = {"version": version, "artifact": {"path": str(path), "sha256": sha}, "port": port,
                               "depends_on": deps, "config": {"server": {"port": port}}}
        services[name] = svc
    services["orchestrator"]["config"]["server"]["workers"] = 2
    services["vault-service"]["secrets"] = {"VAULT_TOKEN": {"from_env": "VAULT_TOKEN"}}
    services["control-center"]["reload"] = {"signal": "HUP"}
    return {
        "version": 1,
        "hosts": hosts,
        "defaults": {
            "type": "notify",
            "args": ["--config", "{config_path}"],
            "restart": {"policy": "on-failure", "delay_s": 1, "watchdog_s": 30},
            "limits": {"memory_max": "128M", "memory_high": "96M", "tasks_max": 64},
            "health": {"http": "http://{address}:{port}/health", "timeout_s": 5},
            "config": {"server": {"host": "{address}"}},
        },
        "services": services,
    }


def write_spec(tmp_path: Path, hosts: dict[str, dict[str, object]], artifacts: Artifacts,
               name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec_doc(hosts, artifacts), sort_keys=False))
    return path


def write_override(tmp_path: Path, name: str, services: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"version": 1, "services": services}, sort_keys=False))
    return path


def recon(tmp_path: Path, *args: str, check: int | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it; the secret is in the environment and must never be printed."""
    env = {**os.environ, "VAULT_TOKEN": CANARY, "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("RECON_STATE_DIR", None)
    res = subprocess.run([sys.executable, "-m", "reconciler", *args], cwd=tmp_path, env=env, text=True,
                         capture_output=True, timeout=90)
    assert CANARY not in res.stdout and CANARY not in res.stderr
    if check is not None:
        assert res.returncode == check, f"exit {res.returncode}\nSTDOUT:\n{res.stdout}\nSTDERR:\n{res.stderr}"
    return res


def plan(tmp_path: Path, specs: Sequence[Path], *args: str, check: int | None = None
         ) -> subprocess.CompletedProcess[str]:
    files = [a for s in specs for a in ("-f", str(s))]
    return recon(tmp_path, "plan", *files, "--state", str(tmp_path / "state"), *args, check=check)


def plan_json(tmp_path: Path, specs: Sequence[Path], *args: str, check: int | None = None) -> dict[str, Any]:
    res = plan(tmp_path, specs, "--json", *args, check=check)
    return json.loads(res.stdout)


def changes_of(doc: dict[str, Any]) -> dict[str, tuple[str, str, list[tuple[Any, ...]]]]:
    return {c["address"]: (c["action"], c["effect"], [(f["path"], f["before"], f["after"], f["kind"])
                                                      for f in c["fields"]]) for c in doc["changes"]}


# --------------------------------------------------------------------------------------------- by hand
def desired_for(spec: Path) -> dict[str, dict[str, DesiredService]]:
    return desired_state(load_spec([str(spec)]), lambda _name, _secret: CANARY)


def _put(data: bytes, path: str, mode: str) -> str:
    q = shlex.quote
    return f"printf %s {q(base64.b64encode(data).decode())} | base64 -d > {q(path)} && chmod {mode} {q(path)}"


def by_hand_script(services: Sequence[DesiredService], artifacts: Artifacts) -> str:
    """What an operator would type to install the services as the spec describes, without recon."""
    q = shlex.quote
    lines = ["set -e"]
    for user, group in sorted({(d.user, d.group) for d in services}):
        lines += [f"getent group {q(group)} >/dev/null || groupadd --system {q(group)}",
                  f"getent passwd {q(user)} >/dev/null || useradd --system -g {q(group)} -M "
                  f"-s /usr/sbin/nologin {q(user)}"]
    for d in services:
        lines += [
            f"mkdir -p {q(d.release_dir)} {q(d.data_dir)} {q(str(Path(d.config_path).parent))}",
            f"chown {q(d.user)}:{q(d.group)} {q(d.data_dir)}",
            _put(artifacts[d.service][0].read_bytes(), d.binary_path, "755"),
            _put(d.config_text.encode(), f"{d.release_dir}/{d.service}.toml", "644"),
            _put(d.unit_text.encode(), f"{d.release_dir}/{d.unit_name}", "644"),
            f"ln -sfn releases/{q(d.version)} {q(d.service_dir)}/current",
            f"ln -sfn {q(d.service_dir + '/current/' + d.service + '.toml')} {q(d.config_path)}",
            f"cp {q(d.release_dir + '/' + d.unit_name)} {q(d.unit_path)}",
        ]
        if d.secret_names:
            lines.append(_put(d.secrets_text.encode(), d.env_path, "600"))
    lines += ["systemctl daemon-reload", "systemctl enable --now " + " ".join(q(d.unit_name) for d in services)]
    return "\n".join(lines) + "\n"


def set_up_by_hand(pool: TestHosts, hosts: dict[str, TestHost], spec: Path, artifacts: Artifacts
                   ) -> dict[str, dict[str, DesiredService]]:
    """Install every host's services by hand over SSH (in parallel); returns the desired state used."""
    desired = desired_for(spec)

    def one(name: str) -> None:
        services = [desired[name][s] for s in ORDER if s in desired[name]]
        res = pool.ssh(hosts[name].index, "sh -s", input=by_hand_script(services, artifacts), timeout=60)
        assert res.returncode == 0, f"{name}: {res.stdout}\n{res.stderr}"

    with ThreadPoolExecutor(len(hosts)) as ex:
        list(ex.map(one, hosts))
    return desired


def write_state_like_apply(state_dir: Path, desired: dict[str, dict[str, DesiredService]]) -> None:
    """The state apply writes after applying `desired` (Applier.record), for drift to be told apart."""
    store = StateStore(state_dir)
    state = store.load()
    salt = state.lineage = state.lineage or str(uuid.uuid4())
    for host, svcs in desired.items():
        for d in svcs.values():
            state.hosts.setdefault(host, {})[d.service] = ServiceRecord(
                version=d.version, sha256=d.sha256, config_sha=d.config_sha, unit_sha=d.unit_sha,
                env_hash=d.secrets_hash(salt), config_text=d.config_text, unit_text=d.unit_text,
                service_dir=d.service_dir, config_path=d.config_path, unit_name=d.unit_name, env_path=d.env_path,
                depends_on=list(d.depends_on), previous_version=None, status="applied", applied_at=now_iso(),
                serial=state.serial + 1)
    store.save(state)
    assert CANARY not in store.path.read_text()


def sh(pool: TestHosts, host: TestHost, cmd: str) -> str:
    res = pool.ssh(host.index, cmd, timeout=60)
    assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
    return res.stdout


def flat(text: str) -> str:
    """Text with its line wrapping undone (the text form wraps long lines)."""
    return " ".join(text.split())


def named(hosts: Sequence[TestHost]) -> dict[str, TestHost]:
    return {f"node{i}": h for i, h in enumerate(hosts, 1)}


# --------------------------------------------------------------------------------------------- tests
def test_fresh_host_plans_all_creates_in_dependency_order(testhost: TestHost, testhosts_spec: HostsSpec,
                                                          tmp_path: Path, plan_artifacts: Artifacts) -> None:
    spec = write_spec(tmp_path, testhosts_spec([testhost]), plan_artifacts)
    doc = plan_json(tmp_path, [spec], "--detailed-exitcode", check=2)
    assert [(c["address"], c["action"], c["effect"], c["wave"]) for c in doc["changes"]] == [
        ("node1/orchestrator", "create", "start", 1),
        ("node1/vault-service", "create", "start", 2),
        ("node1/control-center", "create", "start", 3)]
    assert doc["waves"] == [[n] for n in ORDER]
    assert doc["summary"] == {"create": 3, "update": 0, "replace": 0, "delete": 0, "restart": 0, "reload": 0,
                              "drift": 0, "total": 3}
    vault = doc["changes"][1]
    assert [(f["path"], f["before"], f["after"], f["sensitive"]) for f in vault["fields"]] == [
        ("version", None, "4.0.0", False), ("artifact.sha256", None, plan_artifacts["vault-service"][1], False),
        ("config", None, "(new file)", False), ("unit", None, "(new unit)", False),
        ("secrets", None, "(sensitive)", True)]
    assert not doc["errors"] and not doc["notes"]

    text = plan(tmp_path, [spec], check=0).stdout
    at = [text.index(f"+ node1/{n}: create") for n in ORDER]
    assert at == sorted(at), text
    assert text.rstrip().splitlines()[-1] == (
        "Plan: 3 to create, 0 to update, 0 to replace, 0 to delete, 0 to restart, 0 to reload.")
    assert "+ secrets: (sensitive)" in text


def test_by_hand_edits_show_as_drift_with_exactly_the_right_fields(
        make_testhosts: MakeTestHosts, testhosts_pool: TestHosts, testhosts_spec: HostsSpec, tmp_path: Path,
        plan_artifacts: Artifacts) -> None:
    hosts = named(make_testhosts(2))
    spec = write_spec(tmp_path, testhosts_spec(list(hosts.values())), plan_artifacts)
    desired = set_up_by_hand(testhosts_pool, hosts, spec, plan_artifacts)
    write_state_like_apply(tmp_path / "state", desired)

    vault_bin = desired["node2"]["vault-service"].binary_path
    sh(testhosts_pool, hosts["node1"],
       "sed -i --follow-symlinks 's/^workers = 2$/workers = 3/' /etc/provisioning/orchestrator.toml && "
       f"systemctl stop {UNIT.format('control-center')}")
    sh(testhosts_pool, hosts["node2"],
       f"{{ cat {vault_bin}; printf '# replaced by hand\\n'; }} > {vault_bin}.new && chmod 755 {vault_bin}.new && "
       f"mv -f {vault_bin}.new {vault_bin} && "
       f"systemctl set-property {UNIT.format('orchestrator')} MemoryMax=200M")
    replaced = hashlib.sha256(plan_artifacts["vault-service"][0].read_bytes() + b"# replaced by hand\n").hexdigest()

    doc = plan_json(tmp_path, [spec], "--detailed-exitcode", check=2)
    assert changes_of(doc) == {
        "node1/orchestrator": ("update", "restart", [("config.server.workers", 3, 2, "drift")]),
        "node1/control-center": ("restart", "restart", [("state", "inactive (dead)", "active", "drift")]),
        "node2/orchestrator": ("update", "daemon-reload",
                               [("limits.memory_max (live MemoryMax)", "200M", "128M", "drift")]),
        "node2/vault-service": ("replace", "restart",
                                [("artifact.sha256", replaced, plan_artifacts["vault-service"][1], "drift")]),
    }
    assert all(c["drift"] for c in doc["changes"])
    assert [c["address"] for c in doc["changes"]] == [
        "node1/orchestrator", "node2/orchestrator", "node2/vault-service", "node1/control-center"]
    text = plan(tmp_path, [spec], "--detailed-exitcode", check=2).stdout
    assert text.count("[drift]") == 4
    assert text.rstrip().splitlines()[-1] == (
        "Plan: 0 to create, 2 to update, 1 to replace, 0 to delete, 1 to restart, 0 to reload. 4 drifted.")
    assert "~ config.server.workers: 3 → 2  (drift: changed outside recon)" in text
    refresh = plan_json(tmp_path, [spec], "--refresh-only", "--detailed-exitcode", check=2)
    assert refresh["refresh_only"] and changes_of(refresh) == changes_of(doc)


def test_unreachable_host_is_a_clear_error_and_the_others_are_still_observed(
        testhost: TestHost, testhosts_spec: HostsSpec, tmp_path: Path, plan_artifacts: Artifacts) -> None:
    hosts = testhosts_spec([testhost])
    hosts["node2"] = {**hosts["node1"], "port": 1}          # nothing listens there: connection refused
    spec = write_spec(tmp_path, hosts, plan_artifacts)
    res = plan(tmp_path, [spec], "--json", "--detailed-exitcode", check=1)
    doc = json.loads(res.stdout)
    assert len(doc["errors"]) == 1
    err = doc["errors"][0]
    assert "cannot connect to host 'node2'" in err and f"{testhost.address}:1" in err, err
    assert [(c["address"], c["action"]) for c in doc["changes"]] == [(f"node1/{n}", "create") for n in ORDER]
    assert list(doc["fingerprints"]["hosts"]) == ["node1"]
    text = flat(plan(tmp_path, [spec], check=1).stdout)
    assert "Errors: 1 host could not be observed" in text and "cannot connect to host 'node2'" in text
    assert "+ node1/orchestrator: create" in text


COUNT_WRAPPER = r"""#!/bin/sh
# counts every command sshd runs for a client, then runs it; with a proxy in the environment, as an
# operator's hosts often have (recon's health checks on the host must not go through it)
export http_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 all_proxy=http://127.0.0.1:9
printf '%s\n' "$(printf '%s' "$SSH_ORIGINAL_COMMAND" | head -c 60 | tr '\n' ' ')" >> {log}
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"; fi
exec /bin/sh -l
"""

OBSERVE_SCRIPT = """
import json, sys
from reconciler import pipeline
from reconciler.transport import Session
run = pipeline.prepare([sys.argv[1]], sys.argv[2])
with Session({h: run.spec.hosts[h] for h in run.desired}) as session:
    observed = pipeline.observe(run, session)
    print(json.dumps({
        "session": session.commands,
        "observed": {h: o.commands for h, o in observed.items()},
        "errors": {h: o.error for h, o in observed.items() if o.error},
        "running": {h: sorted(n for n, s in o.services.items() if s.active == "active") for h, o in observed.items()},
        "health": {h: sorted({s.health.code if s.health else None for s in o.services.values()}, key=str)
                   for h, o in observed.items()},
        "versions": {h: {n: [s.current, s.running_version] for n, s in o.services.items()}
                     for h, o in observed.items()},
    }))
"""


def test_hosts_set_up_by_hand_plan_nothing_in_one_round_trip_each(
        make_testhosts: MakeTestHosts, testhosts_pool: TestHosts, testhosts_spec: HostsSpec, tmp_path: Path,
        plan_artifacts: Artifacts) -> None:
    """Two hosts installed by hand match the spec: nothing to do, exit 0; observing costs one command each."""
    hosts = named(make_testhosts(2))
    spec = write_spec(tmp_path, testhosts_spec(list(hosts.values())), plan_artifacts)
    set_up_by_hand(testhosts_pool, hosts, spec, plan_artifacts)
    # sshd runs every client command through a counting wrapper (installed with nsenter: not counted)
    install = (f"cat > /usr/local/sbin/recon-count <<'EOF'\n{COUNT_WRAPPER.format(log=COUNT_LOG)}EOF\n"
               "chmod 755 /usr/local/sbin/recon-count && "
               "echo 'ForceCommand /usr/local/sbin/recon-count' >> /etc/ssh/sshd_config && systemctl reload ssh")
    for h in hosts.values():
        res = testhosts_pool.exec(h.index, install)
        assert res.returncode == 0, res.stderr

    def counted() -> dict[str, int]:
        out = {}
        for name, h in hosts.items():
            res = testhosts_pool.exec(h.index, f"cat {COUNT_LOG} 2>/dev/null || true")
            out[name] = len(res.stdout.splitlines())
        return out

    assert counted() == {"node1": 0, "node2": 0}
    env = {**os.environ, "VAULT_TOKEN": CANARY}
    res = subprocess.run([sys.executable, "-c", OBSERVE_SCRIPT, str(spec), str(tmp_path / "state")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["errors"] == {}
    assert got["session"] == {"node1": 1, "node2": 1}
    assert got["observed"] == {"node1": 1, "node2": 1}
    assert got["running"] == {"node1": sorted(ORDER), "node2": sorted(ORDER)}
    assert got["health"] == {"node1": [200], "node2": [200]}       # every service checked, none through the proxy
    assert all(cur == running and cur for vs in got["versions"].values() for cur, running in vs.values()), got
    assert counted() == {"node1": 1, "node2": 1}
    # the CLI: the hosts match the spec (exit 0 with --detailed-exitcode), one more command per host each time
    res = plan(tmp_path, [spec], "--detailed-exitcode", check=0)
    assert res.stdout.startswith("No changes. Your hosts match the spec."), res.stdout
    assert counted() == {"node1": 2, "node2": 2}
    doc = plan_json(tmp_path, [spec], "--detailed-exitcode", check=0)
    assert doc["summary"]["total"] == 0 and not doc["errors"] and not doc["notes"] and not doc["ignored_drift"]
    assert sorted(doc["fingerprints"]["hosts"]) == ["node1", "node2"]
    assert counted() == {"node1": 3, "node2": 3}
    # the services really run and answer on each host's own address
    for h in hosts.values():
        url = f"http://{h.address}:8085/health"        # the wrapper's proxy would answer 000
        out = sh(testhosts_pool, h, f"curl --noproxy '*' -s -o /dev/null -w '%{{http_code}}\\n' {url}; "
                                    "systemctl is-active " + " ".join(UNIT.format(n) for n in ORDER))
        assert out.split() == ["200", "active", "active", "active"]


def test_a_host_without_curl_is_planned_without_health_checks(testhost: TestHost, testhosts_pool: TestHosts,
                                                              testhosts_spec: HostsSpec, tmp_path: Path,
                                                              plan_artifacts: Artifacts) -> None:
    """No curl on the host: health is not checked at plan time, which is no news, not a failed check."""
    spec = write_spec(tmp_path, testhosts_spec([testhost]), plan_artifacts)
    desired = set_up_by_hand(testhosts_pool, {"node1": testhost}, spec, plan_artifacts)
    write_state_like_apply(tmp_path / "state", desired)
    sh(testhosts_pool, testhost, "rm $(command -v curl) && ! command -v curl")
    doc = plan_json(tmp_path, [spec], "--detailed-exitcode", check=0)
    assert doc["changes"] == [] and not doc["errors"]
    sh(testhosts_pool, testhost, f"systemctl stop {UNIT.format(ORDER[-1])}")   # what it still sees
    doc = plan_json(tmp_path, [spec], "--detailed-exitcode", check=2)
    assert [c["address"] for c in doc["changes"]] == [f"node1/{ORDER[-1]}"]


def test_ignore_drift_quiets_the_listed_fields(testhost: TestHost, testhosts_pool: TestHosts,
                                               testhosts_spec: HostsSpec, tmp_path: Path,
                                               plan_artifacts: Artifacts) -> None:
    spec = write_spec(tmp_path, testhosts_spec([testhost]), plan_artifacts)
    desired = set_up_by_hand(testhosts_pool, {"node1": testhost}, spec, plan_artifacts)
    write_state_like_apply(tmp_path / "state", desired)
    sh(testhosts_pool, testhost,
       "sed -i --follow-symlinks 's/^workers = 2$/workers = 5/' /etc/provisioning/orchestrator.toml && "
       f"systemctl set-property {UNIT.format('orchestrator')} MemoryMax=64M")
    drift = [("config.server.workers", 5, 2, "drift"), ("limits.memory_max (live MemoryMax)", "64M", "128M", "drift")]
    doc = plan_json(tmp_path, [spec], "--detailed-exitcode", check=2)
    assert changes_of(doc) == {"node1/orchestrator": ("update", "restart", drift)}

    both = write_override(tmp_path, "ignore-both.yaml", {
        "orchestrator": {"ignore_drift": ["config.server.workers", "limits.memory_max"]}})
    doc = plan_json(tmp_path, [spec, both], "--detailed-exitcode", check=0)
    assert doc["changes"] == [] and doc["ignored_drift"] == ["node1/orchestrator"]

    one = write_override(tmp_path, "ignore-one.yaml", {"orchestrator": {"ignore_drift": ["limits.memory_max"]}})
    doc = plan_json(tmp_path, [spec, one], "--detailed-exitcode", check=2)
    assert changes_of(doc) == {"node1/orchestrator": ("update", "restart", drift[:1])}


def test_target_and_host_select_what_is_planned(make_testhosts: MakeTestHosts, testhosts_spec: HostsSpec,
                                                tmp_path: Path, plan_artifacts: Artifacts) -> None:
    hosts = named(make_testhosts(2))
    spec = write_spec(tmp_path, testhosts_spec(list(hosts.values())), plan_artifacts)
    doc = plan_json(tmp_path, [spec], "--target", "vault-service", check=0)
    assert [c["address"] for c in doc["changes"]] == [
        "node1/orchestrator", "node2/orchestrator", "node1/vault-service", "node2/vault-service"]
    doc = plan_json(tmp_path, [spec], "--host", "node2", "--detailed-exitcode", check=2)
    assert [c["address"] for c in doc["changes"]] == [f"node2/{n}" for n in ORDER]
    assert list(doc["fingerprints"]["hosts"]) == ["node2"]            # node1 was not contacted
    doc = plan_json(tmp_path, [spec], "--target", "orchestrator", "--host", "node1", check=0)
    assert [c["address"] for c in doc["changes"]] == ["node1/orchestrator"]
    res = plan(tmp_path, [spec], "--target", "nope", check=1)
    assert "no service 'nope' in the spec (--target nope)" in res.stderr
    res = plan(tmp_path, [spec], "--host", "node9", check=1)
    assert "no host 'node9' in the spec (--host node9)" in res.stderr


def test_refresh_only_shows_only_drift(testhost: TestHost, testhosts_pool: TestHosts, testhosts_spec: HostsSpec,
                                       tmp_path: Path, plan_artifacts: Artifacts) -> None:
    spec = write_spec(tmp_path, testhosts_spec([testhost]), plan_artifacts)
    desired = set_up_by_hand(testhosts_pool, {"node1": testhost}, spec, plan_artifacts)
    write_state_like_apply(tmp_path / "state", desired)
    moved = write_override(tmp_path, "moved.yaml", {"orchestrator": {"config": {"server": {"workers": 4}}}})
    sh(testhosts_pool, testhost, f"systemctl stop {UNIT.format('control-center')}")

    doc = plan_json(tmp_path, [spec, moved], "--detailed-exitcode", check=2)
    assert changes_of(doc) == {
        "node1/orchestrator": ("update", "restart", [("config.server.workers", 2, 4, "desired")]),
        "node1/control-center": ("restart", "restart", [("state", "inactive (dead)", "active", "drift")]),
    }
    assert [c["drift"] for c in doc["changes"]] == [False, True]
    refresh = plan_json(tmp_path, [spec, moved], "--refresh-only", "--detailed-exitcode", check=2)
    assert refresh["refresh_only"]
    assert changes_of(refresh) == {"node1/control-center": changes_of(doc)["node1/control-center"]}
    drift_cmd = recon(tmp_path, "drift", "-f", str(spec), "-f", str(moved), "--state", str(tmp_path / "state"),
                      "--format", "json", "--detailed-exitcode", check=2)
    assert changes_of(json.loads(drift_cmd.stdout)) == changes_of(refresh)

    sh(testhosts_pool, testhost, f"systemctl start {UNIT.format('control-center')}")
    res = plan(tmp_path, [spec, moved], "--refresh-only", "--detailed-exitcode", check=0)
    assert res.stdout.startswith("No drift."), res.stdout


def test_saved_plan_round_trips_through_show(testhost: TestHost, testhosts_spec: HostsSpec, tmp_path: Path,
                                             plan_artifacts: Artifacts) -> None:
    spec = write_spec(tmp_path, testhosts_spec([testhost]), plan_artifacts)
    saved = tmp_path / "release.plan"
    res = plan(tmp_path, [spec], "--json", "-o", str(saved), "--detailed-exitcode", check=2)
    assert saved.exists() and (saved.stat().st_mode & 0o777) == 0o600
    assert CANARY not in saved.read_text()
    doc = json.loads(saved.read_text())
    assert doc["kind"] == "recon-plan" and doc["format_version"] == 1
    assert set(doc["fingerprints"]) >= {"spec", "hosts", "state_serial", "lineage"}
    shown = recon(tmp_path, "show", str(saved), "--format", "json", check=0)
    assert shown.stdout == res.stdout

    text_file = tmp_path / "text.plan"
    text = plan(tmp_path, [spec], "-o", str(text_file), check=0).stdout
    saved_line = f"\nSaved the plan to {text_file}. Apply exactly this plan with: recon apply {text_file}\n"
    assert text.endswith(saved_line)
    assert recon(tmp_path, "show", str(text_file), check=0).stdout == text[: -len(saved_line)]
    md = recon(tmp_path, "show", str(saved), "--format", "markdown", check=0).stdout
    assert "node1/vault-service" in md and "(sensitive)" in md
    # not a plan: a clear error
    bad = tmp_path / "bad.plan"
    bad.write_text('{"kind": "something else"}')
    assert "is not a recon plan" in recon(tmp_path, "show", str(bad), check=1).stderr
