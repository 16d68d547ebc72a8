"""The pure plan (`make_plan`, `plan_service`) and the observe protocol (`build_script`, `parse_output`),
without hosts: property tests (hypothesis) and unit tests. Runs in a few seconds."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.desired import SECRET_MASK, DesiredService, desired_service, render_config, salted_hash
from reconciler.observe import PROTOCOL, Health, ObservedHost, ObservedService, ObserveError, Target, build_script
from reconciler.observe import parse_output as parse_observed
from reconciler.plan import (
    ACTIONS,
    Change,
    Plan,
    config_changes,
    make_plan,
    plan_service,
    unit_changes,
    unit_limits,
)
from reconciler.render import render_json, render_markdown, render_text
from reconciler.spec.model import Host, build_service
from reconciler.state import ServiceRecord, State

SALT = "3f0c1d52-lineage-as-salt"
SHA = {"orchestrator": "a" * 64, "vault-service": "b" * 64, "control-center": "c" * 64}
PORTS = {"orchestrator": 8080, "vault-service": 8085, "control-center": 8081}
DEPS = {"orchestrator": [], "vault-service": ["orchestrator"], "control-center": ["orchestrator", "vault-service"]}
NODE1 = Host("node1", "10.0.0.5")
NODE2 = Host("node2", "10.0.0.6")
CANARY = "canary-9f8e7d-never-print-me"


# --------------------------------------------------------------------------------------------- builders
def make_desired(name: str = "orchestrator", version: str = "5.0.0", *, host: Host = NODE1,
                 secret: str | None = None, config: dict[str, Any] | None = None,
                 **raw: Any) -> DesiredService:
    """A DesiredService through the spec model, as `recon plan` builds it."""
    doc: dict[str, Any] = {
        "version": version,
        "artifact": {"path": f"artifacts/{name}-{version}", "sha256": SHA.get(name, "d" * 64)},
        "port": PORTS.get(name, 9000),
        "args": ["--config", "{config_path}"],
        "depends_on": DEPS.get(name, []),
        "type": "notify",
        "restart": {"policy": "on-failure", "delay_s": 1, "watchdog_s": 30},
        "limits": {"memory_max": "128M", "memory_high": "96M", "tasks_max": 64},
        "health": {"http": "http://{address}:{port}/health", "timeout_s": 5},
        "config": {"server": {"host": "{address}", "port": PORTS.get(name, 9000), "workers": 2}},
    }
    if secret is not None:
        doc["secrets"] = {"VAULT_TOKEN": {"from_env": "VAULT_TOKEN"}}
    doc.update(raw)
    svc = build_service(name, doc, [host.name], None)
    d = desired_service(svc, host, lambda _n, _s: secret or "")
    if config is not None:
        d = dataclasses.replace(d, config=config, config_text=render_config(config))
    return d


def timespan(usec: int) -> str:
    """A µs value as `systemctl show` prints CPUQuotaPerSecUSec."""
    if usec % 1_000_000 == 0:
        return f"{usec // 1_000_000}s"
    if usec < 1_000_000 and usec % 1000 == 0:
        return f"{usec // 1000}ms"
    return f"{usec / 1_000_000:.6f}s"


def live_props(d: DesiredService) -> dict[str, str]:
    """The run-time limits systemd reports for d's unit, as `systemctl show` prints them."""
    limits = unit_limits(d.unit_text)
    out = {"MemoryMax": "infinity", "MemoryHigh": "infinity", "CPUQuotaPerSecUSec": "infinity",
           "TasksMax": "4915"}
    for key, (_, value) in limits.items():
        prop = "CPUQuotaPerSecUSec" if key == "CPUQuota" else key
        out[prop] = timespan(value) if key == "CPUQuota" and isinstance(value, int) else str(value)
    return out


def converged(d: DesiredService, salt: str = SALT, **changes: Any) -> ObservedService:
    """What the host shows when d is installed and running exactly as the spec says."""
    props = {"Id": d.unit_name, "LoadState": "loaded", "ActiveState": "active", "SubState": "running",
             "Result": "success", "MainPID": "4242", "UnitFileState": "enabled", "NeedDaemonReload": "no",
             "DropInPaths": "", **live_props(d)}
    o = ObservedService(
        d.service, current=d.version, releases=[d.version], binary_sha=d.sha256, want_binary_sha=d.sha256,
        config_text=d.config_text, unit_text=d.unit_text,
        env_hash=d.secrets_hash(salt), props=props,
        cmdline=f"/usr/bin/python3 {d.binary_path} --config {d.config_path}",
        health=Health(200) if d.health_url else None)
    return dataclasses.replace(o, **changes)


def record_for(d: DesiredService, salt: str = SALT, status: str = "applied") -> ServiceRecord:
    """What apply records after applying d (tests may write it the way apply does)."""
    return ServiceRecord(
        version=d.version, sha256=d.sha256, config_sha=d.config_sha, unit_sha=d.unit_sha,
        env_hash=d.secrets_hash(salt), config_text=d.config_text, unit_text=d.unit_text,
        service_dir=d.service_dir, config_path=d.config_path, unit_name=d.unit_name, env_path=d.env_path,
        depends_on=list(d.depends_on), status=status, applied_at="2025-01-01T00:00:00Z", serial=1)


def platform(hosts: tuple[Host, ...] = (NODE1,), secret: str = CANARY) -> dict[str, dict[str, DesiredService]]:
    out: dict[str, dict[str, DesiredService]] = {}
    for h in hosts:
        out[h.name] = {
            "orchestrator": make_desired("orchestrator", host=h),
            "vault-service": make_desired("vault-service", "4.0.0", host=h, secret=secret),
            "control-center": make_desired("control-center", host=h, reload={"signal": "HUP"}),
        }
    return out


def observed_all(desired: dict[str, dict[str, DesiredService]]) -> dict[str, ObservedHost]:
    return {h: ObservedHost(h, {n: converged(d) for n, d in svcs.items()},
                            unit_files=[d.unit_name for d in svcs.values()], users={"provisioning"}, commands=1)
            for h, svcs in desired.items()}


def state_all(desired: dict[str, dict[str, DesiredService]]) -> State:
    return State(serial=1, lineage=SALT,
                 hosts={h: {n: record_for(d) for n, d in svcs.items()} for h, svcs in desired.items()})


def paths(change: Change | None) -> set[str]:
    return {f.path for f in change.fields} if change else set()


def rendered(plan: Plan) -> list[str]:
    return [render_text(plan, color=False), render_text(plan, color=True), render_json(plan),
            render_markdown(plan), json.dumps(plan.to_dict(), default=str)]


# --------------------------------------------------------------------------------------------- strategies
KEYS = st.text(alphabet="abcdefghijklmnop_", min_size=1, max_size=6)
SCALARS = st.one_of(
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.lists(st.integers(0, 9), max_size=3),
)
CONFIGS = st.dictionaries(
    KEYS, st.recursive(SCALARS, lambda inner: st.dictionaries(KEYS, inner, max_size=3), max_leaves=8), max_size=5)
LIMITS = st.fixed_dictionaries({}, optional={
    "memory_max": st.sampled_from(["128M", "1G", "infinity", "1000000"]),
    "memory_high": st.sampled_from(["96M", "512M"]),
    "cpu_quota": st.sampled_from(["50%", "150%", "200%", "12.5%"]),
    "tasks_max": st.sampled_from([64, 512, "infinity"]),
    "nofile": st.sampled_from([1024, 65536]),
})


@st.composite
def desired_services(draw: st.DrawFn) -> DesiredService:
    name = draw(st.sampled_from(sorted(SHA)))
    secret = draw(st.one_of(st.none(), st.text(alphabet="abcdefXYZ0123456789", min_size=6, max_size=20)))
    raw: dict[str, Any] = {"limits": draw(LIMITS)}
    if draw(st.booleans()):
        raw["reload"] = {"signal": "HUP"}
    if draw(st.booleans()):
        raw["health"] = {"timeout_s": 5}
    if draw(st.booleans()):
        raw["env"] = {"LOG_LEVEL": draw(st.sampled_from(["info", "debug"]))}
    return make_desired(name, draw(st.sampled_from(["5.0.0", "5.0.1", "4.0.0"])),
                        secret=("canary-" + secret) if secret else None, config=draw(CONFIGS), **raw)


def flatten(cfg: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Leaf values by key path (tables followed, anything else a leaf)."""
    if isinstance(cfg, dict) and (cfg or not prefix):
        out: dict[tuple[str, ...], Any] = {}
        for k, v in cfg.items():
            out.update(flatten(v, (*prefix, k)))
        return out
    return {prefix: cfg}


_ABSENT = object()


def dig(cfg: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(cfg, dict) or k not in cfg:
            return _ABSENT
        cfg = cfg[k]
    return cfg


def same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --------------------------------------------------------------------------------------------- properties
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=desired_services(), with_record=st.booleans())
def test_a_host_that_matches_the_spec_plans_nothing(d: DesiredService, with_record: bool) -> None:
    o = converged(d)
    rec = record_for(d) if with_record else None
    assert plan_service(d, o, rec, SALT) is None
    assert plan_service(d, o, rec, SALT, refresh_only=True) is None
    desired = {d.host: {d.service: d}}
    observed = {d.host: ObservedHost(d.host, {d.service: o}, unit_files=[d.unit_name])}
    state = State(lineage=SALT, hosts={d.host: {d.service: rec}} if rec else {})
    plan = make_plan(desired, observed, state, SALT)
    assert not plan.has_changes and not plan.errors and not plan.notes and not plan.ignored_drift


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(want=CONFIGS, have=CONFIGS)
def test_every_config_key_that_differs_appears(want: dict[str, Any], have: dict[str, Any]) -> None:
    d = make_desired(config=want)
    o = converged(d, config_text=render_config(have))
    change = plan_service(d, o, None, SALT)
    fields = [f for f in change.fields if f.path.startswith("config")] if change else []
    if fields and fields[0].path == "config" and fields[0].before == "(edited text)":
        # same data, other text: only when the values compare equal key by key
        assert all(same(dig(want, k), dig(have, k)) for k in flatten(want) | flatten(have))
        return
    covered = [tuple(f.path.split(".")[1:]) for f in fields]
    for f, keys in zip(fields, covered, strict=True):
        before, after = dig(have, keys), dig(want, keys)
        assert not same(before, after), f.path
        assert f.before == (None if before is _ABSENT else before)
        assert f.after == (None if after is _ABSENT else after)
        assert f.kind == "desired"
    differing = {k for k in flatten(want).keys() | flatten(have).keys() if not same(dig(want, k), dig(have, k))}
    for leaf in differing:   # covered by the key itself, a table above it, or (empty tables) a key below
        assert any(leaf[:len(c)] == c or c[:len(leaf)] == leaf for c in covered), \
            f"config.{'.'.join(leaf)} differs but is not planned"
    assert bool(fields) == bool(differing)


# Each mutation: what it does to the observed service, and the field paths it must produce.
MUTATIONS = ("version", "binary", "config", "unit_memory", "live_memory", "live_cpu", "secrets", "stopped",
             "unhealthy", "disabled", "stale_process", "daemon_reload", "unit_removed_key")
EXCLUSIVE = [{"version", "binary"}, {"version", "stale_process"}, {"version", "daemon_reload"},
             {"stopped", "unhealthy", "stale_process"},
             {"unit_memory", "daemon_reload", "unit_removed_key"}]


def mutate(d: DesiredService, o: ObservedService, m: str) -> set[str]:
    if m == "version":
        o.current = "4.9.0"
        o.releases = ["4.9.0"]
        o.binary_sha = "e" * 64
        if o.unit_text:
            o.unit_text = o.unit_text.replace(f"/releases/{d.version}/", "/releases/4.9.0/")
        o.cmdline = (o.cmdline or "").replace(f"/releases/{d.version}/", "/releases/4.9.0/")
        return {"version"}
    if m == "binary":
        o.binary_sha = "f" * 64
        return {"artifact.sha256"}
    if m == "config":
        cfg = json.loads(json.dumps(d.config))
        cfg["zz_added_by_hand"] = 7
        o.config_text = render_config(cfg)
        return {"config.zz_added_by_hand"}
    if m == "unit_memory":
        assert o.unit_text is not None
        o.unit_text = o.unit_text.replace("[Install]", "MemoryMax=333M\n\n[Install]")
        o.props["MemoryMax"] = str(333 * 1024**2)      # edited and daemon-reloaded: systemd runs it
        return {"limits.memory_max (MemoryMax)"}
    if m == "unit_removed_key":
        assert o.unit_text is not None
        o.unit_text = o.unit_text.replace("PrivateTmp=yes\n", "")
        return {"hardening.private_tmp (PrivateTmp)"}
    if m == "live_memory":
        o.props["MemoryMax"] = str(777 * 1024**2)
        return {"limits.memory_max (live MemoryMax)"}
    if m == "live_cpu":
        o.props["CPUQuotaPerSecUSec"] = "3.330000s"
        return {"limits.cpu_quota (live CPUQuota)"}
    if m == "secrets":
        o.env_hash = "1" * 64
        return {"secrets"}
    if m == "stopped":
        o.props.update(ActiveState="inactive", SubState="dead", MainPID="0")
        o.health = None
        return {"state"}
    if m == "unhealthy":
        if d.health_url is None:
            return set()
        o.health = Health(503)
        return {"health"}
    if m == "disabled":
        o.props["UnitFileState"] = "disabled"
        return {"enabled"}
    if m == "stale_process":
        o.cmdline = f"/usr/bin/python3 {d.service_dir}/releases/4.8.0/{d.service} --config x"
        return {"running_version"}
    if m == "daemon_reload":
        o.props["NeedDaemonReload"] = "yes"
        return {"unit.loaded"}
    raise AssertionError(m)


@st.composite
def mutation_sets(draw: st.DrawFn) -> list[str]:
    chosen = draw(st.sets(st.sampled_from(MUTATIONS), min_size=1, max_size=5))
    for group in EXCLUSIVE:
        extra = sorted(chosen & group)[1:]
        chosen -= set(extra)
    return sorted(chosen)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=desired_services(), muts=mutation_sets(), recorded=st.sampled_from(["none", "applied", "in-progress"]))
def test_every_field_that_differs_appears_with_its_kind(d: DesiredService, muts: list[str], recorded: str) -> None:
    if "unit_memory" in muts and "live_memory" in muts:
        muts = [m for m in muts if m != "live_memory"] + ["live_memory"]   # live after the unit edit
    o = converged(d)
    o.props = dict(o.props)
    expected: set[str] = set()
    for m in muts:
        expected |= mutate(d, o, m)
    rec = None if recorded == "none" else record_for(d, status=recorded)
    files = {"version", "binary", "config", "unit_memory", "unit_removed_key", "secrets"}
    if recorded == "in-progress" and not files & set(muts) and not expected & {"state", "health", "running_version"}:
        expected.add("last_apply")      # an interrupted apply of these very files: a confirming restart
    change = plan_service(d, o, rec, SALT)
    assert paths(change) == expected
    if change is None:
        return
    want_kind = "drift" if recorded == "applied" else "desired"
    assert {f.kind for f in change.fields} == {want_kind}
    assert change.drift == (want_kind == "drift")
    assert change.action in ACTIONS
    if "version" in expected or "artifact.sha256" in expected:
        assert change.action == "replace"
    for f in change.fields:
        if f.path == "secrets":
            assert f.sensitive and f.before in (SECRET_MASK, None) and f.after in (SECRET_MASK, None)
    # refresh-only keeps exactly the drift
    refresh = plan_service(d, o, rec, SALT, refresh_only=True)
    assert paths(refresh) == (expected if want_kind == "drift" else set())
    # ignore_drift quiets the listed fields (drift only)
    quiet = dataclasses.replace(d, ignore_drift=tuple(sorted({p.split(" (")[0] for p in expected})))
    quieted = plan_service(quiet, o, rec, SALT)
    if want_kind == "drift":
        assert quieted is not None and quieted.action == "none" and not quieted.fields
    else:
        assert paths(quieted) == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=8, max_size=32),
       muts=mutation_sets(), exists=st.booleans(), refresh=st.booleans(), applied=st.booleans())
def test_secrets_never_appear_in_any_rendering(secret: str, muts: list[str], exists: bool, refresh: bool,
                                               applied: bool) -> None:
    def plan_with(value: str) -> tuple[dict[str, dict[str, DesiredService]], Plan]:
        desired = platform(secret=value)
        observed = observed_all(desired)
        svc = observed["node1"].services
        for m in muts:
            mutate(desired["node1"]["vault-service"], svc["vault-service"], m)
        svc["vault-service"].env_hash = "2" * 64
        if not exists:
            svc["vault-service"] = ObservedService("vault-service")
        state = state_all(desired) if applied else State(lineage=SALT)
        return desired, make_plan(desired, observed, state, SALT, refresh_only=refresh)

    value = "canary-" + secret
    desired, plan = plan_with(value)
    # a secret like "sensitiv" or "orchestr" is in every rendering: compare with a plan without it
    control = "".join(rendered(plan_with("canary-" + "@" * len(secret))[1]))
    assert desired["node1"]["vault-service"].secrets_text == f'VAULT_TOKEN="{value}"\n'
    for text in rendered(plan):
        assert value not in text
        assert secret not in text or secret in control
    for c in plan.changes:
        for f in c.fields:
            if f.path == "secrets":
                assert f.sensitive and {f.before, f.after} <= {SECRET_MASK, None}


# --------------------------------------------------------------------------------------------- make_plan
def test_fresh_hosts_plan_creates_in_dependency_order() -> None:
    desired = platform((NODE1, NODE2))
    observed = {h: ObservedHost(h) for h in desired}
    plan = make_plan(desired, observed, State(lineage=SALT), SALT)
    assert plan.waves == [["orchestrator"], ["vault-service"], ["control-center"]]
    assert [(c.address, c.action, c.wave) for c in plan.changes] == [
        ("node1/orchestrator", "create", 1), ("node2/orchestrator", "create", 1),
        ("node1/vault-service", "create", 2), ("node2/vault-service", "create", 2),
        ("node1/control-center", "create", 3), ("node2/control-center", "create", 3)]
    vault = plan.changes[2]
    assert [f.path for f in vault.fields] == ["version", "artifact.sha256", "config", "unit", "secrets"]
    assert vault.effect == "start" and vault.to_version == "4.0.0" and not vault.drift
    assert plan.counts() == {"create": 6, "update": 0, "replace": 0, "delete": 0, "restart": 0, "reload": 0}


def test_converged_platform_plans_nothing_and_spec_moves_are_desired() -> None:
    desired = platform((NODE1, NODE2))
    observed, state = observed_all(desired), state_all(desired)
    assert not make_plan(desired, observed, state, SALT).has_changes
    # the spec moves: a new version, a config value, a limit
    moved = platform((NODE1, NODE2))
    moved["node1"]["orchestrator"] = make_desired("orchestrator", "5.0.1")
    moved["node2"]["control-center"] = make_desired(
        "control-center", host=NODE2, reload={"signal": "HUP"},
        config={"server": {"host": "10.0.0.6", "port": 8081, "workers": 4}})
    moved["node2"]["orchestrator"] = make_desired("orchestrator", host=NODE2,
                                                  limits={"memory_max": "256M", "memory_high": "96M", "tasks_max": 64})
    plan = make_plan(moved, observed, state, SALT)
    got = {c.address: (c.action, c.effect, [(f.path, f.before, f.after, f.kind) for f in c.fields])
           for c in plan.changes}
    assert got == {
        "node1/orchestrator": ("replace", "restart", [("version", "5.0.0", "5.0.1", "desired")]),
        "node2/orchestrator": ("update", "restart",
                               [("limits.memory_max (MemoryMax)", "128M", "256M", "desired")]),
        "node2/control-center": ("reload", "reload", [("config.server.workers", 2, 4, "desired")]),
    }
    assert not any(c.drift for c in plan.changes)
    assert plan.changes[0].reason == "version 5.0.0 → 5.0.1"


def test_spec_move_and_host_drift_in_one_config_are_told_apart() -> None:
    d0 = make_desired(config={"server": {"port": 8080, "workers": 2}, "log": {"level": "info"}})
    d1 = make_desired(config={"server": {"port": 8080, "workers": 4}, "log": {"level": "info"}})
    by_hand = render_config({"server": {"port": 9999, "workers": 2}, "log": {"level": "info"}})
    change = plan_service(d1, converged(d0, config_text=by_hand), record_for(d0), SALT)
    assert change is not None
    assert [(f.path, f.before, f.after, f.kind) for f in change.fields] == [
        ("config.server.port", 9999, 8080, "drift"), ("config.server.workers", 2, 4, "desired")]
    assert change.drift and change.action == "update" and change.effect == "restart"
    assert change.reason.endswith("(changed outside recon)")


def test_unit_keys_edited_by_hand_are_drift_and_spec_moves_are_not() -> None:
    d0 = make_desired()
    d1 = make_desired(limits={"memory_max": "256M", "memory_high": "96M", "tasks_max": 64})
    edited = d0.unit_text.replace("TasksMax=64", "TasksMax=99")
    o = converged(d0, unit_text=edited)
    o.props["TasksMax"] = "99"
    change = plan_service(d1, o, record_for(d0), SALT)
    assert change is not None
    assert [(f.path, f.before, f.after, f.kind) for f in change.fields] == [
        ("limits.memory_max (MemoryMax)", "128M", "256M", "desired"),
        ("limits.tasks_max (TasksMax)", "99", "64", "drift")]


def test_new_release_path_in_execstart_is_not_a_change_of_its_own() -> None:
    old = make_desired("orchestrator", "5.0.0")
    new = make_desired("orchestrator", "5.0.1")
    change = plan_service(new, converged(old), record_for(old), SALT)
    assert change is not None and paths(change) == {"version"}
    assert (change.action, change.from_version, change.to_version) == ("replace", "5.0.0", "5.0.1")


@pytest.mark.parametrize(("props", "path", "before", "after", "effect"), [
    ({"MemoryMax": str(200 * 1024**2)}, "limits.memory_max (live MemoryMax)", "200M", "128M", "daemon-reload"),
    ({"MemoryMax": "infinity"}, "limits.memory_max (live MemoryMax)", "infinity", "128M", "daemon-reload"),
    ({"MemoryHigh": "infinity"}, "limits.memory_high (live MemoryHigh)", "infinity", "96M", "daemon-reload"),
    ({"TasksMax": "33"}, "limits.tasks_max (live TasksMax)", "33", "64", "daemon-reload"),
    ({"CPUQuotaPerSecUSec": "1.500000s"}, "limits.cpu_quota (live CPUQuota)", "150%", None, "daemon-reload"),
])
def test_limits_set_at_run_time_are_drift(props: dict[str, str], path: str, before: str, after: str | None,
                                          effect: str) -> None:
    d = make_desired()
    o = converged(d)
    o.props = {**o.props, **props}
    change = plan_service(d, o, record_for(d), SALT)
    assert change is not None
    assert [(f.path, f.before, f.after, f.kind) for f in change.fields] == [(path, before, after, "drift")]
    assert (change.action, change.effect) == ("update", effect)
    assert change.reason.endswith("(set at run time)")


def test_cpu_quota_in_the_spec_is_compared_with_systemd_time_spans() -> None:
    d = make_desired(limits={"cpu_quota": "150%"})
    assert plan_service(d, converged(d), None, SALT) is None
    o = converged(d)
    assert o.props["CPUQuotaPerSecUSec"] == "1.500000s"
    o.props = {**o.props, "CPUQuotaPerSecUSec": "500ms"}
    change = plan_service(d, o, None, SALT)
    assert change is not None and [(f.path, f.before, f.after) for f in change.fields] == [
        ("limits.cpu_quota (live CPUQuota)", "50%", "150%")]


def test_runtime_only_changes() -> None:
    d = make_desired()
    rec = record_for(d)
    stopped = converged(d, health=None)
    stopped.props = {**stopped.props, "ActiveState": "failed", "SubState": "failed", "MainPID": "0"}
    c = plan_service(d, stopped, rec, SALT)
    assert c is not None and (c.action, c.effect, c.reason) == ("restart", "restart", "unit is failed")
    assert [(f.path, f.before, f.after, f.kind) for f in c.fields] == [("state", "failed", "active", "drift")]

    sick = converged(d, health=Health(503))
    c = plan_service(d, sick, rec, SALT)
    assert c is not None and (c.action, c.reason) == ("restart", "health check fails (HTTP 503)")
    assert plan_service(d, converged(d, health=Health(204)), rec, SALT) is not None   # expect_status is 200
    assert plan_service(d, converged(d, health=None), rec, SALT) is None                 # not probed: no news

    disabled = converged(d)
    disabled.props = {**disabled.props, "UnitFileState": "disabled"}
    c = plan_service(d, disabled, rec, SALT)
    assert c is not None and (c.action, c.effect) == ("update", "none")

    stale = converged(d, cmdline=f"/usr/bin/python3 {d.service_dir}/releases/4.9.0/orchestrator")
    c = plan_service(d, stale, rec, SALT)
    assert c is not None and c.reason == "running 4.9.0, installed 5.0.0"

    pending = converged(d)
    pending.props = {**pending.props, "NeedDaemonReload": "yes"}
    c = plan_service(d, pending, rec, SALT)
    assert c is not None and paths(c) == {"unit.loaded"} and c.effect == "restart" and c.drift

    both = converged(d, cmdline=stale.cmdline)          # disabled and running an old release: restart
    both.props = {**both.props, "UnitFileState": "disabled"}
    c = plan_service(d, both, rec, SALT)
    assert c is not None and paths(c) == {"enabled", "running_version"} and c.action == "restart"


def test_an_interrupted_apply_is_confirmed_by_a_restart() -> None:
    """kill -9 of apply after the files were switched: the host matches the spec, the record does not."""
    d0 = make_desired(config={"server": {"port": 8080, "workers": 2}})
    d1 = make_desired(config={"server": {"port": 8080, "workers": 3}})
    o = converged(d1)
    for rec, before in ((record_for(d1, status="in-progress"), "interrupted"), (record_for(d0), "not recorded")):
        c = plan_service(d1, o, rec, SALT)
        assert c is not None and (c.action, c.effect, c.drift) == ("restart", "restart", False)
        assert [(f.path, f.before, f.after, f.kind) for f in c.fields] == [
            ("last_apply", before, "confirmed", "desired")]
        assert plan_service(d1, o, rec, SALT, refresh_only=True) is None
    assert plan_service(d1, o, None, SALT) is None                     # set up by hand: nothing to confirm
    assert plan_service(d1, o, record_for(d1), SALT) is None
    assert plan_service(d1, o, record_for(d0, status="failed"), SALT) is None
    # with other run-time differences the one restart does both
    disabled = converged(d1)
    disabled.props = {**disabled.props, "UnitFileState": "disabled"}
    c = plan_service(d1, disabled, record_for(d1, status="in-progress"), SALT)
    assert c is not None and paths(c) == {"enabled", "last_apply"} and c.action == "restart"
    # files still differ: the plan changes them, which restarts anyway
    c = plan_service(d1, converged(d0), record_for(d1, status="in-progress"), SALT)
    assert c is not None and paths(c) == {"config.server.workers"} and c.effect == "restart"


def test_config_only_change_reloads_when_the_service_has_a_reload_signal() -> None:
    d = make_desired("control-center", reload={"signal": "HUP"})
    o = converged(d, config_text=d.config_text.replace("workers = 2", "workers = 3"))
    c = plan_service(d, o, None, SALT)
    assert c is not None and (c.action, c.effect) == ("reload", "reload")
    o.env_hash = "0" * 64            # secrets live in the environment: a restart is needed
    c = plan_service(d, o, None, SALT)
    assert c is not None and (c.action, c.effect) == ("update", "restart")


def test_config_text_edits_that_keep_the_data() -> None:
    d = make_desired()
    c = plan_service(d, converged(d, config_text=d.config_text + "# a comment\n"), record_for(d), SALT)
    assert c is not None and [(f.path, f.before, f.kind) for f in c.fields] == [("config", "(edited text)", "drift")]
    c = plan_service(d, converged(d, config_text="[server\nbroken"), record_for(d), SALT)
    assert c is not None and [(f.path, f.before) for f in c.fields] == [("config", "(not valid TOML)")]
    c = plan_service(d, converged(d, config_text=None), None, SALT)
    assert c is not None and [(f.path, f.after) for f in c.fields] == [("config", "(new file)")]


def test_service_removed_by_hand_is_drift_and_refresh_only_shows_it() -> None:
    desired = platform()
    observed = observed_all(desired)
    observed["node1"].services["control-center"] = ObservedService("control-center")
    state = state_all(desired)
    for refresh in (False, True):
        plan = make_plan(desired, observed, state, SALT, refresh_only=refresh)
        assert [(c.address, c.action, c.drift) for c in plan.changes] == [("node1/control-center", "create", True)]
        assert {f.kind for f in plan.changes[0].fields} == {"drift"}
        assert plan.changes[0].fields[0].before is None
    # never applied: a desired create, which refresh-only does not show
    state.hosts["node1"].pop("control-center")
    assert not make_plan(desired, observed, state, SALT, refresh_only=True).changes
    assert not make_plan(desired, observed, state, SALT).changes[0].drift


def test_refresh_only_shows_only_drift() -> None:
    desired = platform()
    observed, state = observed_all(desired), state_all(desired)
    moved = platform()
    moved["node1"]["orchestrator"] = make_desired("orchestrator", "5.0.1")            # spec moved
    o = observed["node1"].services["control-center"]
    o.props = {**o.props, "ActiveState": "inactive", "SubState": "dead"}                # host moved
    assert {c.address for c in make_plan(moved, observed, state, SALT).changes} == {
        "node1/orchestrator", "node1/control-center"}
    plan = make_plan(moved, observed, state, SALT, refresh_only=True)
    assert plan.refresh_only
    assert [(c.address, c.action, [f.path for f in c.fields]) for c in plan.changes] == [
        ("node1/control-center", "restart", ["state"])]


def test_ignore_drift_in_make_plan() -> None:
    desired = platform()
    desired["node1"]["orchestrator"] = make_desired(ignore_drift=["config.server.workers", "limits.memory_max"])
    observed, state = observed_all(desired), state_all(desired)
    o = observed["node1"].services["orchestrator"]
    o.config_text = o.config_text.replace("workers = 2", "workers = 5")
    o.props = {**o.props, "MemoryMax": str(300 * 1024**2)}
    plan = make_plan(desired, observed, state, SALT)
    assert not plan.changes and plan.ignored_drift == ["node1/orchestrator"]
    # an unlisted field still shows, the listed ones stay quiet
    o.config_text = o.config_text.replace("port = 8080", "port = 8090")
    plan = make_plan(desired, observed, state, SALT)
    assert [[f.path for f in c.fields] for c in plan.changes] == [["config.server.port"]]
    # a spec move of an ignored field is not drift: it is planned
    desired["node1"]["orchestrator"] = make_desired(
        ignore_drift=["config.server.workers"], config={"server": {"host": "10.0.0.5", "port": 8080, "workers": 9}})
    o.config_text = desired["node1"]["orchestrator"].config_text.replace("workers = 9", "workers = 2")
    o.props = {**o.props, "MemoryMax": str(128 * 1024**2)}
    plan = make_plan(desired, observed, state, SALT)
    assert [[(f.path, f.kind) for f in c.fields] for c in plan.changes] == [[("config.server.workers", "desired")]]


def test_target_and_host_scope() -> None:
    desired = platform((NODE1, NODE2))
    observed = {h: ObservedHost(h) for h in desired}
    plan = make_plan(desired, observed, State(), SALT, targets={"orchestrator", "vault-service"})
    assert [c.address for c in plan.changes] == ["node1/orchestrator", "node2/orchestrator",
                                                 "node1/vault-service", "node2/vault-service"]
    plan = make_plan(desired, observed, State(), SALT, hosts={"node2"})
    assert {c.host for c in plan.changes} == {"node2"} and len(plan.changes) == 3
    # a host out of scope is not an error even when it was not observed
    plan = make_plan(desired, {"node2": ObservedHost("node2")}, State(), SALT, hosts={"node2"})
    assert not plan.errors


def test_unreachable_host_is_an_error_and_the_others_are_planned() -> None:
    desired = platform((NODE1, NODE2))
    observed = {"node1": ObservedHost("node1"),
                "node2": ObservedHost("node2", error="cannot connect to host 'node2' (10.0.0.6:22): refused")}
    plan = make_plan(desired, observed, State(), SALT)
    assert plan.errors == ["cannot connect to host 'node2' (10.0.0.6:22): refused"]
    assert {c.host for c in plan.changes} == {"node1"} and len(plan.changes) == 3
    plan = make_plan(desired, {"node1": ObservedHost("node1")}, State(), SALT)
    assert plan.errors == ["host 'node2' was not observed"]


def test_deletes_notes_and_unmanaged_units() -> None:
    desired = platform()
    observed, state = observed_all(desired), state_all(desired)
    gone = desired["node1"].pop("control-center")
    observed["node1"].unit_files.append("provisioning-legacy.service")
    observed["node1"].services["control-center"].props = {
        **observed["node1"].services["control-center"].props,
        "DropInPaths": "/etc/systemd/system/provisioning-control-center.service.d/override.conf"}
    state.hosts["old-host"] = {"orchestrator": record_for(make_desired())}
    plan = make_plan(desired, observed, state, SALT)
    assert [(c.address, c.action, c.effect, c.wave) for c in plan.changes] == [
        ("node1/control-center", "delete", "stop", len(plan.waves) + 1)]
    assert plan.changes[0].fields[0].before == gone.version and plan.changes[0].fields[0].after is None
    assert plan.notes == [
        "node1: provisioning-legacy.service exists but recon does not manage it (left alone)",
        "old-host: in recon's state (orchestrator) but not in the spec; left alone"]
    # a managed unit with a drop-in recon does not write: noted, not planned
    observed["node1"].services["orchestrator"].props = {
        **observed["node1"].services["orchestrator"].props,
        "DropInPaths": "/etc/systemd/system/provisioning-orchestrator.service.d/override.conf "
                       "/etc/systemd/system.control/provisioning-orchestrator.service.d/50-MemoryMax.conf"}
    plan = make_plan(desired, observed, state, SALT, refresh_only=True)
    assert not plan.changes
    assert ("node1: provisioning-orchestrator.service has a drop-in recon does not manage: "
            "/etc/systemd/system/provisioning-orchestrator.service.d/override.conf (left alone)") in plan.notes
    # already gone from the host: nothing to delete
    observed["node1"].services["control-center"] = ObservedService("control-center")
    assert not make_plan(desired, observed, state, SALT).changes


# --------------------------------------------------------------------------------------------- plan data
def test_plan_from_dict_ignores_unknown_keys_and_round_trips() -> None:
    desired = platform()
    plan = make_plan(desired, {"node1": ObservedHost("node1")}, State(), SALT)
    plan.notes.append("a note")
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    assert Plan.from_dict(json.loads(render_json(plan))) == plan
    doc = plan.to_dict()
    doc["new_top_level"] = {"x": 1}
    doc["changes"][0]["new_change_key"] = "later recon"
    doc["changes"][0]["fields"][0]["new_field_key"] = [1, 2]
    assert Plan.from_dict(doc) == plan


def test_counts_do_not_raise_on_an_unknown_action() -> None:
    plan = Plan(changes=[Change("n/s", "n", "s", "migrate", "from a newer recon", "restart"),
                         Change("n/t", "n", "t", "create", "", "start")])
    assert plan.counts() == {"create": 1, "update": 0, "replace": 0, "delete": 0, "restart": 0, "reload": 0}
    assert plan.to_dict()["summary"]["total"] == 2
    assert "Plan: 1 to create" in render_text(plan, color=False)


def test_config_and_unit_changes_helpers() -> None:
    assert config_changes(None, {"a": 1}) == [("config", None, "(new file)")]
    assert config_changes({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": [1]}) == [
        ("config.b.c", 2, 3), ("config.d", None, [1])]
    assert config_changes({"a": 8}, {"a": "8"}) == [("config.a", 8, "8")]       # types matter
    assert config_changes({"a": True}, {"a": 1}) == [("config.a", True, 1)]
    assert unit_changes(None, "x") == [("unit", None, "(new unit)")]
    assert unit_changes("[Service]\nMemoryMax=1G\nFoo=1\n", "[Service]\nMemoryMax=2G\n") == [
        ("unit.Foo", "1", None), ("limits.memory_max (MemoryMax)", "1G", "2G")]


def test_unit_limits_reads_what_systemd_would() -> None:
    text = "[Service]\nMemoryMax=1G\n  TasksMax = 64\nCPUQuota=150%\nMemoryHigh=1M\nMemoryHigh=\n#MemoryMax=9G\n"
    assert unit_limits(text) == {"MemoryMax": ("1G", 1024**3), "TasksMax": ("64", 64),
                                 "CPUQuota": ("150%", 1_500_000)}
    assert unit_limits("MemoryMax=2G\n") == {"MemoryMax": ("2G", 2 * 1024**3)}
    assert unit_limits("[Service]\nMemoryMax=1G\nStartupMemoryMax=2G\nCPUQuotaPeriodSec=10ms\n") == {
        "MemoryMax": ("1G", 1024**3)}
    assert unit_limits("[Service]\nMemoryMax=1G\nMemoryMax=\nTasksMax=infinity\nCPUQuota=80%") == {
        "TasksMax": ("infinity", "infinity"), "CPUQuota": ("80%", 800_000)}
    assert unit_limits("[Service]\nMemoryMax=50%\n") == {"MemoryMax": ("50%", None)}   # not comparable


# --------------------------------------------------------------------------------------------- observe protocol
def _fake_install(tmp_path: Path) -> tuple[list[Target], Path]:
    svc_dir = tmp_path / "opt/orchestrator"
    rel = svc_dir / "releases/5.0.0"
    rel.mkdir(parents=True)
    (svc_dir / "releases/4.9.0").mkdir()
    (svc_dir / "releases/4.9.0/orchestrator").write_bytes(b"old")
    (svc_dir / "releases/stray-file").write_text("not a release")
    (rel / "orchestrator").write_bytes(b"#!/bin/sh\necho hi\n")
    (rel / "orchestrator.toml").write_text("[server]\nport = 8080\n")
    (svc_dir / "current").symlink_to("releases/5.0.0/")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "orchestrator.toml").symlink_to(rel / "orchestrator.toml")
    (etc / "orchestrator.env").write_text("VAULT_TOKEN=x\n")
    # a second service whose files are awkward: no final newline, a tab, bytes that are not UTF-8,
    # a path with a space, and `current` pointing at a release that is gone
    odd = tmp_path / "opt/odd svc"
    (odd / "releases").mkdir(parents=True)
    (odd / "current").symlink_to("releases/9.9.9")
    (etc / "odd.toml").write_bytes(b"a\t=\t1\n\xff\xfe tail")
    targets = [Target("orchestrator", str(svc_dir), str(etc / "orchestrator.toml"),
                      "provisioning-recon-test-none.service", str(etc / "orchestrator.env"), "4.9.0", None),
               Target("odd", str(odd), str(etc / "odd.toml"), "provisioning-recon-test-odd.service",
                      str(etc / "odd.env")),
               Target("missing", str(tmp_path / "opt/missing"), str(etc / "missing.toml"),
                      "provisioning-recon-test-missing.service", str(etc / "missing.env"))]
    return targets, rel


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])   # dash on Debian; bash is /bin/sh on RHEL
def test_observe_script_runs_read_only_and_parses(tmp_path: Path, shell: str) -> None:
    """The batched command, run by the shell on this machine against a fake install tree."""
    import hashlib

    targets, _ = _fake_install(tmp_path)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    script = build_script(targets, SALT)
    res = subprocess.run([shell, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before
    obs = parse_observed("node1", "some login banner\n" + res.stdout, targets)
    o = obs.services["orchestrator"]
    assert (o.current, o.releases) == ("5.0.0", ["4.9.0", "5.0.0"])
    assert o.binary_sha == hashlib.sha256(b"#!/bin/sh\necho hi\n").hexdigest()
    assert o.want_binary_sha == hashlib.sha256(b"old").hexdigest()
    assert o.config_text == "[server]\nport = 8080\n"
    assert o.env_hash == salted_hash(SALT, b"VAULT_TOKEN=x\n")
    odd = obs.services["odd"]
    assert (odd.current, odd.releases, odd.binary_sha) == ("9.9.9", [], None)
    assert odd.config_text == b"a\t=\t1\n\xff\xfe tail".decode("utf-8", "replace")
    assert odd.env_hash is None and odd.unit_text is None
    assert o.exists and odd.exists and not obs.services["missing"].exists


def test_observe_script_forks_a_fixed_number_of_processes(tmp_path: Path) -> None:
    """The point of the batched script: host-side processes do not grow with the number of services."""
    import shutil

    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is needed for this test (scripts/setup.sh installs it)")
    targets, _ = _fake_install(tmp_path)
    counts = []
    # a secrets file costs two processes more (its salted hash), a dangling `current` one (readlink)
    one = dataclasses.replace(targets[0], env_path=targets[0].env_path + ".absent",
                              health_url="http://127.0.0.1:9/health")
    for ts in ([one], [one] * 10):
        log = tmp_path / "strace.log"
        subprocess.run([strace, "-f", "-qq", "-e", "trace=execve", "-o", str(log), "/bin/sh", "-c",
                        build_script(ts, SALT)], capture_output=True, timeout=60, check=True)
        counts.append(log.read_text().count("execve("))
    assert counts[0] == counts[1] and counts[0] <= 12, counts


def test_parse_output_reads_each_block() -> None:
    import base64

    def line(key: str, value: str | bytes) -> str:
        data = value.encode() if isinstance(value, str) else value
        return f"{key}\t-\t{base64.b64encode(data).decode()}"

    t = [Target("a", "/srv/releases/a", "/etc/a.toml", "provisioning-a.service", "/etc/a.env", "1.1",
                "http://127.0.0.1:8080/health"),
         Target("b", "/opt/b", "/etc/b.toml", "provisioning-b.service", "/etc/b.env", None,
                "http://127.0.0.1:8081"),
         Target("c", "/opt/c\\d", "/etc/c.toml", "provisioning-c.service", "/etc/c.env", None,
                "http://127.0.0.1:8082/health?x=[1]")]
    sha_a, sha_w, sha_c = "1" * 64, "2" * 64, "4" * 64
    text = "\n".join([
        line("protocol", PROTOCOL),
        line("meta", "current\ta\t1.0\nrelease\ta\t1.1\nrelease\ta\t1.0\nenv_hash\ta\t" + "3" * 64 + "  -\n"
                     "unit_file\t-\tprovisioning-a.service\nunit_file\t-\tprovisioning-old.service\n"
                     "current\tc\t2.0\ncheck\tprovisioning-c.service\t-\ncheck\tprovisioning-a.service\t-\n"),
        # sha256sum escapes a path with a backslash (and starts the line with one)
        line("sums", f"{sha_a}  /srv/releases/a/releases/1.0/a\n{sha_w}  /srv/releases/a/releases/1.1/a\n"
                     f"\\{sha_c}  /opt/c\\\\d/releases/2.0/c\n"),
        line("sizes", "4 /etc/a.toml\n0 /etc/systemd/system/provisioning-a.service\n"),
        line("files", b"x=1\n"),
        line("show", "Id=provisioning-a.service\nActiveState=active\nMainPID=42\n\n"
                     "Id=provisioning-b.service\nActiveState=failed\nMainPID=0\n"),
        line("cmdline", b"/proc/42/cmdline:/srv/releases/a/releases/1.0/a\0--config\0/etc/a.toml\0\n"),
        line("health", "1 200\n"),      # `curl -Z`: URL number and code; c (number 0) never answered
        line("users", "provisioning:x:998:998::/nonexistent:/usr/sbin/nologin\n"),
        line("end", "ok")])
    obs = parse_observed("n", text, t)
    a, b = obs.services["a"], obs.services["b"]
    c = obs.services["c"]
    assert (a.current, a.releases, a.binary_sha, a.want_binary_sha) == ("1.0", ["1.0", "1.1"], sha_a, sha_w)
    assert (a.config_text, a.unit_text, a.env_hash) == ("x=1\n", "", "3" * 64)
    assert (a.active, a.main_pid, a.running_version) == ("active", 42, "1.0")   # not "a": anchored at its dir
    assert a.cmdline == "/srv/releases/a/releases/1.0/a --config /etc/a.toml"
    assert a.health == Health(200) and a.health.ok
    assert (b.active, b.cmdline, b.config_text, b.health) == ("failed", None, None, None)   # not checked
    assert (c.binary_sha, c.health) == (sha_c, Health(None))      # checked, no answer: a failed check
    # curl older than 7.75 runs the checks one after another: `= CODE` lines in the order of the checks
    seq = parse_observed("n", text.replace(line("health", "1 200\n"), line("health", "= 503\n= 200\n")), t)
    assert (seq.services["c"].health, seq.services["a"].health) == (Health(503), Health(200))
    assert obs.unit_files == ["provisioning-a.service", "provisioning-old.service"]
    assert obs.users == {"provisioning"}
    with pytest.raises(ObserveError, match="changed while it was read"):
        parse_observed("n", text.replace(line("files", b"x=1\n"), line("files", b"x=12\n")), t)
    unreadable = line("meta", "current\ta\t1.0\nunreadable\ta\t/etc/a.env\n")
    with pytest.raises(ObserveError, match=r"cannot read /etc/a.env \(a\): observe as root"):
        parse_observed("n", "\n".join([line("protocol", PROTOCOL), unreadable, line("end", "ok")]), t)


def test_parse_output_refuses_what_is_not_the_protocol() -> None:
    import base64

    def line(key: str, value: str) -> str:
        return f"{key}\t-\t{base64.b64encode(value.encode()).decode()}"

    t = [Target("a", "/opt/a", "/etc/a.toml", "provisioning-a.service", "/etc/a.env")]
    lines = [line("protocol", PROTOCOL), line("meta", "current\ta\t1.0\n"),
             line("show", "Id=provisioning-a.service\nActiveState=active\n"), line("end", "ok")]
    ok = "\n".join(lines)
    obs = parse_observed("n", ok, t)
    assert obs.services["a"].current == "1.0" and obs.services["a"].props["ActiveState"] == "active"
    with pytest.raises(ObserveError, match="cut short"):
        parse_observed("n", ok.rsplit("\n", 1)[0], t)
    with pytest.raises(ObserveError, match="not recon's protocol"):
        parse_observed("n", "\n".join([lines[0], "stray output after the start", *lines[1:]]), t)
    with pytest.raises(ObserveError, match="unexpected protocol"):
        parse_observed("n", "\n".join([line("protocol", "recon-observe/1"), *lines[1:]]), t)
    with pytest.raises(ObserveError):
        parse_observed("n", "", t)


def test_observe_script_names_each_service_account() -> None:
    t = [Target("a", "/opt/a", "/etc/a.toml", "provisioning-a.service", "/etc/a.env", user="svc-a")]
    script = build_script(t, SALT)
    assert "getent passwd provisioning svc-a" in script
    assert script.count("systemctl show") == 1
    assert "curl -q -g -s --noproxy '*' -m 3 -Z -w '%{urlnum} %{http_code}\\n'" in script
