"""The plan: a pure function of (desired state, observed hosts, last-applied state) → plan data.

A change per host and service with an address `HOST/SERVICE[/PART]`, an action (create, update,
replace, delete, restart, reload), the reason in words, and before/after per field with secrets
masked. Each field says whether the spec moved (`desired`) or the host moved away from what recon
last applied (`drift`). No I/O here.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from reconciler.desired import MANAGED_HEADER, SECRET_MASK, UNIT_KEYS, DesiredService, parse_unit, sha256_text
from reconciler.observe import ObservedHost, ObservedService
from reconciler.state import ServiceRecord, State
from reconciler.waves import waves_of

FORMAT_VERSION = 1
ACTIONS = ("create", "update", "replace", "delete", "restart", "reload")
ACTION_ORDER = {a: i for i, a in enumerate(ACTIONS)}
_SYSTEMD_SIZE_KEYS = {"MemoryMax": "limits.memory_max", "MemoryHigh": "limits.memory_high"}


@dataclass
class FieldChange:
    path: str
    before: Any
    after: Any
    kind: str = "desired"          # desired | drift
    sensitive: bool = False


@dataclass
class Change:
    address: str
    host: str
    service: str
    action: str
    reason: str
    effect: str                    # start | restart | reload | stop | daemon-reload | none
    wave: int = 0
    fields: list[FieldChange] = field(default_factory=list)
    drift: bool = False
    from_version: str | None = None
    to_version: str | None = None

    @property
    def kinds(self) -> set[str]:
        return {f.kind for f in self.fields}


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    waves: list[list[str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ignored_drift: list[str] = field(default_factory=list)
    fingerprints: dict[str, Any] = field(default_factory=dict)
    spec_files: list[str] = field(default_factory=list)
    refresh_only: bool = False
    format_version: int = FORMAT_VERSION

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(ACTIONS, 0)
        for c in self.changes:
            out[c.action] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = {**self.counts(), "drift": sum(1 for c in self.changes if c.drift),
                        "total": len(self.changes)}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        changes = [Change(**{**c, "fields": [FieldChange(**f) for f in c.get("fields", [])]})
                   for c in d.get("changes", [])]
        keys = {k for k in cls.__dataclass_fields__ if k != "changes"}
        return cls(changes=changes, **{k: d[k] for k in keys if k in d})


# ---------------------------------------------------------------------------------------------
def parse_config(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


def _flatten(d: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(d, dict) and d:
        for k, v in d.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = d
    return out


def config_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Per TOML key (`config.server.workers`) what differs; DeepDiff only runs on differing configs."""
    if before is None:
        return [("config", None, "(new file)")]
    from deepdiff import DeepDiff  # only for services whose config differs

    diff = DeepDiff(dict(before), dict(after), threshold_to_diff_deeper=0, ignore_order=False,
                    view="tree")
    out: list[tuple[str, Any, Any]] = []
    for items in diff.values():
        for item in items:
            path = item.path(output_format="list")
            key = "config." + ".".join(str(p) for p in path)
            b = item.t1 if not _is_notpresent(item.t1) else None
            a = item.t2 if not _is_notpresent(item.t2) else None
            out.append((key, b, a))
    return sorted(out, key=lambda x: x[0])


def _is_notpresent(v: Any) -> bool:
    return type(v).__name__ == "NotPresent"


def unit_changes(before_text: str | None, after_text: str) -> list[tuple[str, Any, Any]]:
    """Per unit key, mapped to the spec field it comes from (`MemoryMax` → `limits.memory_max`)."""
    if before_text is None:
        return [("unit", None, "(new unit)")]
    b, a = parse_unit(before_text), parse_unit(after_text)
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(b) | set(a)):
        bv, av = b.get(key), a.get(key)
        if bv == av:
            continue
        spec_key = UNIT_KEYS.get(key, f"unit.{key}")
        label = f"{spec_key} ({key})" if key in UNIT_KEYS else spec_key
        out.append((label, _one(bv), _one(av)))
    return out


def _one(v: list[str] | None) -> Any:
    if v is None:
        return None
    return v[0] if len(v) == 1 else v


def _strip_header(text: str | None) -> str | None:
    if text is not None and text.startswith(MANAGED_HEADER):
        return text[len(MANAGED_HEADER):]
    return text


def _size_bytes(v: str) -> int | None:
    from reconciler.spec.units import parse_size

    try:
        b = parse_size(v)
    except ValueError:
        return None
    return b if isinstance(b, int) else None


def _live_limits(d: DesiredService, o: ObservedService) -> list[tuple[str, Any, Any]]:
    """Limits changed at run time (`systemctl set-property`) while the unit file still matches."""
    out: list[tuple[str, Any, Any]] = []
    want = parse_unit(d.unit_text)
    for key, spec_key in _SYSTEMD_SIZE_KEYS.items():
        live = o.props.get(key)
        if live is None or key not in want:
            continue
        wb = _size_bytes(want[key][0])
        lb = None if live == "infinity" else (int(live) if live.isdigit() else None)
        if live == "infinity" and want[key][0] == "infinity":
            continue
        if wb is not None and lb is not None and wb != lb:
            out.append((f"{spec_key} (live {key})", _human(lb), want[key][0]))
    return out


def _human(n: int) -> str:
    for unit, f in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n % f == 0:
            return f"{n // f}{unit}"
    return str(n)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Facts:
    version: str | None
    sha: str | None
    config_sha: str | None
    unit_sha: str | None
    env_hash: str | None


def _observed_facts(o: ObservedService) -> _Facts:
    return _Facts(o.current, o.binary_sha, sha256_text(o.config_text) if o.config_text is not None else None,
                  sha256_text(o.unit_text) if o.unit_text is not None else None, o.env_hash)


def _fast_converged(d: DesiredService, o: ObservedService, salt: str) -> bool:
    """The hot path: a direct comparison; no DeepDiff for services that match."""
    return (
        o.current == d.version
        and o.binary_sha == d.sha256
        and o.config_text == d.config_text
        and o.unit_text == d.unit_text
        and o.env_hash == d.secrets_hash(salt)
        and o.props.get("ActiveState") == "active"
        and o.props.get("NeedDaemonReload", "no") == "no"
        and o.props.get("UnitFileState", "enabled") == "enabled"
        and (o.running_version in (None, d.version))
        and (o.health is None or o.health.ok)
        and not _live_limits(d, o)
    )


def _kind(record: ServiceRecord | None, observed_value: Any, recorded_value: Any) -> str:
    """drift when recon applied something and the host no longer shows it."""
    if record is None or record.status == "in-progress":
        return "desired"
    return "drift" if observed_value != recorded_value else "desired"


def plan_service(d: DesiredService, o: ObservedService, record: ServiceRecord | None, salt: str,
                 refresh_only: bool = False) -> Change | None:
    """The change for one service on one host, or None when it is converged."""
    address = d.address
    if not o.exists:
        if refresh_only:
            if record is not None:
                return Change(address, d.host, d.service, "create", "removed outside recon", "start",
                              fields=[FieldChange("release", record.version, None, "drift")], drift=True,
                              to_version=d.version)
            return None
        fields = [FieldChange("version", None, d.version), FieldChange("artifact.sha256", None, d.sha256),
                  FieldChange("config", None, "(new file)"), FieldChange("unit", None, "(new unit)")]
        if d.secret_names:
            fields.append(FieldChange("secrets", None, SECRET_MASK, sensitive=True))
        kind = "drift" if record is not None and record.status == "applied" else "desired"
        for f in fields:
            f.kind = kind
        reason = "service is not on the host" + (" (removed outside recon)" if kind == "drift" else "")
        return Change(address, d.host, d.service, "create", reason, "start", fields=fields,
                      drift=kind == "drift", to_version=d.version)
    if _fast_converged(d, o, salt):
        return None

    fields: list[FieldChange] = []
    rec = record
    # release: version and binary
    if o.current != d.version:
        fields.append(FieldChange("version", o.current, d.version,
                                  _kind(rec, o.current, rec.version if rec else None)))
    elif o.binary_sha != d.sha256:
        fields.append(FieldChange("artifact.sha256", o.binary_sha, d.sha256,
                                  _kind(rec, o.binary_sha, rec.sha256 if rec else None)))
    # config by TOML key
    if o.config_text != d.config_text:
        kind = _kind(rec, o.config_text, rec.config_text if rec else None)
        before = parse_config(_strip_header(o.config_text))
        if o.config_text is not None and before is None:
            fields.append(FieldChange("config", "(not valid TOML)", "(rendered from the spec)", kind))
        else:
            changes = config_changes(before, d.config)
            if not changes and o.config_text is not None:  # same data, different text (comments, order)
                changes = [("config", "(edited text)", "(rendered from the spec)")]
            for path, b, a in changes:
                fields.append(FieldChange(path, b, a, _field_kind(rec, path, kind, d, o)))
    # unit by key (the release path in ExecStart follows the version: not a change of its own)
    if o.unit_text != d.unit_text:
        kind = _kind(rec, o.unit_text, rec.unit_text if rec else None)
        seen_unit = o.unit_text
        if seen_unit is not None and o.current and o.current != d.version:
            seen_unit = seen_unit.replace(f"/releases/{o.current}/", f"/releases/{d.version}/")
        for path, b, a in unit_changes(seen_unit, d.unit_text):
            fields.append(FieldChange(path, b, a, kind))
    # secrets (fingerprint only; values never leave memory)
    want_env = d.secrets_hash(salt)
    if o.env_hash != want_env:
        kind = _kind(rec, o.env_hash, rec.env_hash if rec else None)
        fields.append(FieldChange("secrets", SECRET_MASK if o.env_hash else None,
                                  SECRET_MASK if want_env else None, kind, sensitive=True))
    # run-time facts
    live = _live_limits(d, o) if o.unit_text == d.unit_text else []
    for path, b, a in live:
        fields.append(FieldChange(path, b, a, "drift" if rec else "desired"))
    active = o.props.get("ActiveState", "unknown")
    runtime_kind = "drift" if rec is not None and rec.status == "applied" else "desired"
    if active != "active":
        sub = o.props.get("SubState", "")
        fields.append(FieldChange("state", f"{active}" + (f" ({sub})" if sub and sub != active else ""),
                                  "active", runtime_kind))
    elif o.health is not None and not o.health.ok:
        fields.append(FieldChange("health", o.health.summary(), f"HTTP {d.health_status}", runtime_kind))
    if o.props.get("UnitFileState", "enabled") not in ("enabled", ""):
        fields.append(FieldChange("enabled", o.props.get("UnitFileState"), "enabled", runtime_kind))
    running = o.running_version
    if active == "active" and running is not None and running != d.version and o.current == d.version:
        fields.append(FieldChange("running_version", running, d.version,
                                  "desired" if rec is None or rec.status == "in-progress" else "drift"))

    # ignore_drift
    kept: list[FieldChange] = []
    ignored: list[str] = []
    for f in fields:
        if f.kind == "drift" and _ignored(f.path, d.ignore_drift):
            ignored.append(f"{address}: {f.path}")
            continue
        kept.append(f)
    if refresh_only:
        kept = [f for f in kept if f.kind == "drift"]
    if not kept:
        return None if not ignored else Change(address, d.host, d.service, "none", "", "none",
                                               fields=[], drift=False)

    action, effect, reason = _decide(d, o, kept)
    return Change(address, d.host, d.service, action, reason, effect, fields=kept,
                  drift=any(f.kind == "drift" for f in kept), from_version=o.current, to_version=d.version)


def _field_kind(rec: ServiceRecord | None, path: str, kind: str, d: DesiredService, o: ObservedService) -> str:
    """A config key drifted when its observed value differs from the one recon applied."""
    if rec is None or kind != "drift":
        return kind
    recorded = parse_config(_strip_header(rec.config_text))
    observed = parse_config(_strip_header(o.config_text))
    if recorded is None or observed is None or not path.startswith("config."):
        return kind
    keys = path.split(".")[1:]
    return "drift" if _dig(recorded, keys) != _dig(observed, keys) else "desired"


def _dig(d: Any, keys: list[str]) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _ignored(path: str, patterns: tuple[str, ...]) -> bool:
    base = path.split(" (", 1)[0]
    return any(base == p or base.startswith(p + ".") for p in patterns)


def _decide(d: DesiredService, o: ObservedService, fields: list[FieldChange]) -> tuple[str, str, str]:
    paths = [f.path for f in fields]
    first = fields[0]
    def words(f: FieldChange) -> str:
        if f.sensitive:
            return f"{f.path} changed"
        if f.path == "version":
            return f"version {f.before} → {f.after}"
        return f"{f.path.split(' (')[0]} {_short(f.before)} → {_short(f.after)}"

    drift_note = " (changed outside recon)" if any(f.kind == "drift" for f in fields) else ""
    if any(p in ("version", "artifact.sha256") for p in paths):
        reason = words(next(f for f in fields if f.path in ("version", "artifact.sha256")))
        if "artifact.sha256" in paths and "version" not in paths:
            reason = "binary differs from the artifact" + drift_note
        return "replace", "restart", reason
    file_fields = [f for f in fields if f.path.startswith(("config", "secrets")) or f.path == "unit"
                   or (" (" in f.path and "live" not in f.path) or f.path.startswith("unit.")]
    live_fields = [f for f in fields if "(live " in f.path]
    runtime = [f for f in fields if f.path in ("state", "health", "running_version", "enabled")]
    if file_fields:
        unit_touched = any(not f.path.startswith("config") for f in file_fields)
        if not unit_touched and d.reload_signal and not runtime:
            return "reload", "reload", _reason(file_fields, words) + drift_note
        return "update", "restart", _reason(file_fields, words) + drift_note
    if live_fields and not runtime:
        return "update", "daemon-reload", _reason(live_fields, words) + " (set at run time)"
    f = runtime[0] if runtime else first
    if f.path == "state":
        return "restart", "restart", f"unit is {f.before}"
    if f.path == "health":
        return "restart", "restart", f"health check fails ({f.before})"
    if f.path == "running_version":
        return "restart", "restart", f"running {f.before}, installed {f.after}"
    if f.path == "enabled":
        return "update", "none", f"unit is {f.before}, not enabled"
    return "update", "restart", words(f)


def _reason(fields: list[FieldChange], words: Any) -> str:
    parts = [words(f) for f in fields[:2]]
    more = len(fields) - 2
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _short(v: Any) -> str:
    if v is None:
        return "(none)"
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------------
def make_plan(desired: Mapping[str, Mapping[str, DesiredService]], observed: Mapping[str, ObservedHost],
              state: State, salt: str, *, refresh_only: bool = False, targets: set[str] | None = None,
              hosts: set[str] | None = None) -> Plan:
    """Plan every host and service in the scope; pure."""
    plan = Plan(refresh_only=refresh_only)
    deps: dict[str, list[str]] = {}
    for svcs in desired.values():
        for name, d in svcs.items():
            deps[name] = list(d.depends_on)
    plan.waves = waves_of(deps)
    wave_of = {name: i for i, wave in enumerate(plan.waves, 1) for name in wave}
    for host, svcs in desired.items():
        if hosts is not None and host not in hosts:
            continue
        obs = observed.get(host)
        if obs is None or obs.error:
            plan.errors.append(obs.error if obs and obs.error else f"host {host!r} was not observed")
            continue
        for name, d in svcs.items():
            if targets is not None and name not in targets:
                continue
            o = obs.services.get(name) or ObservedService(name)
            change = plan_service(d, o, state.record(host, name), salt, refresh_only)
            if change is None:
                continue
            if change.action == "none":
                plan.ignored_drift.append(change.address)
                continue
            change.wave = wave_of.get(name, 0)
            plan.changes.append(change)
        # services recon applied here that the spec no longer names
        for name, rec in sorted(state.hosts.get(host, {}).items()):
            if name in svcs or (targets is not None and name not in targets):
                continue
            o = obs.services.get(name)
            if o is not None and not o.exists:
                continue
            if refresh_only:
                continue
            plan.changes.append(Change(f"{host}/{name}", host, name, "delete", "no longer in the spec", "stop",
                                       wave=len(plan.waves) + 1,
                                       fields=[FieldChange("version", rec.version, None)],
                                       from_version=rec.version))
        managed = {f"provisioning-{n}.service" for n in svcs} | {
            r.unit_name for r in state.hosts.get(host, {}).values()}
        for unit in obs.unit_files:
            if unit not in managed:
                plan.notes.append(f"{host}: {unit} exists but recon does not manage it (left alone)")
    plan.changes.sort(key=lambda c: (c.wave, c.host, c.service))
    return plan


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
