"""The plan: a pure function of (desired state, observed hosts, last-applied state) → plan data.

A change per host and service with an address `HOST/SERVICE[/PART]`, an action (create, update,
replace, delete, restart, reload), the reason in words, and before/after per field with secrets
masked. Each field says whether the spec moved (`desired`) or the host moved away from what recon
last applied (`drift`). No I/O here.

Speed: a converged service costs a handful of string and dict comparisons (`_fast_converged`); the
desired unit's limits are read once per unit text (cached), and TOML/unit texts are only parsed for
services that differ.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

from reconciler.desired import (
    LOGROTATE_PATH,
    MANAGED_HEADER,
    SECRET_MASK,
    UNIT_KEYS,
    DesiredService,
    logrotate_text,
    parse_unit,
    sha256_text,
)
from reconciler.observe import ObservedHost, ObservedService
from reconciler.ownership import Owned, Resource, plan_host, record_problem
from reconciler.state import RecordStatus, ServiceRecord, State
from reconciler.waves import waves_of

FORMAT_VERSION = 1


class Action(StrEnum):
    """What a change does to a service (the plan JSON carries the value)."""

    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    RESTART = "restart"
    RELOAD = "reload"
    NONE = "none"            # differs only in fields under ignore_drift: never applied, never shown


class Effect(StrEnum):
    """What a change does to the running process."""

    START = "start"
    RESTART = "restart"
    RELOAD = "reload"
    STOP = "stop"
    DAEMON_RELOAD = "daemon-reload"
    NONE = "none"


class Kind(StrEnum):
    """Why a field differs: the spec moved (`desired`), or the host moved away from what recon applied."""

    DESIRED = "desired"
    DRIFT = "drift"


class Part(StrEnum):
    """Which part of a service a field belongs to; apply and the plan's decisions branch on it."""

    RELEASE = "release"      # version, artifact
    CONFIG = "config"
    UNIT = "unit"
    DROPIN = "dropin"        # a drop-in recon did not write
    SECRETS = "secrets"
    LIVE = "live"            # a limit systemd applies at run time (`systemctl set-property`)
    RUNTIME = "runtime"      # the unit's state, health, running version, enablement, last apply
    HOST_FILE = "host-file"  # a host-wide file recon writes (the logrotate file of `logs:`); no service


ACTIONS = tuple(a for a in Action if a != Action.NONE)
ACTION_ORDER = {a: i for i, a in enumerate(ACTIONS)}

# Limits systemd applies at run time (`systemctl set-property`): systemctl-show property → unit key.
LIVE_PROPS = (("MemoryMax", "MemoryMax"), ("MemoryHigh", "MemoryHigh"), ("TasksMax", "TasksMax"),
              ("CPUQuotaPerSecUSec", "CPUQuota"))
# Unit keys whose systemd default is "no limit" (TasksMax defaults to DefaultTasksMax instead).
_UNLIMITED_BY_DEFAULT = frozenset({"MemoryMax", "MemoryHigh", "CPUQuota"})
_INFINITY = "infinity"
_NOT_RUNNING = ("inactive", "failed")     # a `run: stopped` service is converged in these states
# Run-time fields, the first present decides: the first four need a restart, "enabled" only `enable`.
_RUNTIME_PATHS = ("state", "health", "running_version", "last_apply", "enabled")


@dataclass
class FieldChange:
    path: str                      # shown and in the JSON: `config.a.b`, `limits.memory_max (live MemoryMax)`
    before: Any
    after: Any
    kind: Kind = Kind.DESIRED
    sensitive: bool = False
    part: Part = Part.UNIT
    spec_path: str | None = None   # the spec path when `path` says more (a live limit): what ignore_drift matches

    @property
    def key(self) -> str:
        return self.spec_path or self.path


@dataclass
class Change:
    address: str
    host: str
    service: str
    action: Action
    reason: str
    effect: Effect
    wave: int = 0
    fields: list[FieldChange] = field(default_factory=list)
    drift: bool = False
    from_version: str | None = None
    to_version: str | None = None

    @property
    def kinds(self) -> set[Kind]:
        return {f.kind for f in self.fields}


def _typed(d: dict[str, Any], **enums: type[StrEnum]) -> dict[str, Any]:
    """`d` with the named string values read back as their enums (a value this recon does not know stays
    a plain string, so an older or newer plan file still reads)."""
    out = dict(d)
    for key, enum in enums.items():
        if key in out:
            with contextlib.suppress(ValueError):
                out[key] = enum(out[key])
    return out


def _known(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of `d` that are fields of dataclass `cls` (readers ignore keys they do not know)."""
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {k: v for k, v in d.items() if k in names}


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
    # ownership (reconciler.ownership): accounts and directories created or used as they are, and what
    # recon refuses to do (a login account, a hand-edited state): a plan with refusals is not applied
    resources: list[Resource] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def counts(self) -> dict[str, int]:
        """Changes per known action (all six keys); an action this recon does not know is not counted."""
        out = dict.fromkeys(ACTIONS, 0)
        for c in self.changes:
            if c.action in out:
                out[c.action] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = {**self.counts(), "drift": sum(1 for c in self.changes if c.drift),
                        "total": len(self.changes)}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """Read a plan back (from `to_dict` or the JSON form); keys this recon does not know are ignored."""
        changes = []
        for c in d.get("changes") or []:
            fields = [FieldChange(**_typed(_known(FieldChange, f), kind=Kind, part=Part))
                      for f in c.get("fields") or []]
            changes.append(Change(**{**_typed(_known(Change, c), action=Action, effect=Effect), "fields": fields}))
        resources = [Resource(**_known(Resource, r)) for r in d.get("resources") or []]
        rest = {k: v for k, v in _known(cls, d).items() if k not in ("changes", "resources")}
        return cls(changes=changes, resources=resources, **rest)


# --------------------------------------------------------------------------------------------- parsing
@lru_cache(maxsize=4096)
def _toml(text: str) -> dict[str, Any] | None:
    """Parsed TOML (cached per text: callers must not change the result), None when not valid TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


def parse_config(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    return _toml(text)


@lru_cache(maxsize=4096)
def _unit(text: str) -> dict[str, list[str]]:
    """`parse_unit`, cached per text (callers must not change the result)."""
    return parse_unit(text)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type, all the way down (`8`, `8.0`, `"8"` and `true` all differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _config_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[tuple[str, ...], Any, Any]]:
    """The field detail of two configs that differ, by DeepDiff (imported only when needed): per TOML
    key path; tables are followed into, arrays are reported whole; types are strict (8, "8", 8.0 differ)."""
    from deepdiff import DeepDiff

    diff = DeepDiff(dict(before), dict(after), threshold_to_diff_deeper=0, ignore_private_variables=False,
                    view="tree")
    found: dict[tuple[str, ...], tuple[Any, Any]] = {}
    for items in diff.values():
        for item in items:
            keys: list[str] = []
            for part in item.path(output_format="list"):
                if not isinstance(part, str):
                    break          # inside an array: the array is the value that changed
                keys.append(part)
            key = tuple(keys)
            if not key:            # DeepDiff reported the whole config: name its top-level keys
                for k in before.keys() | after.keys():
                    if not _same(before.get(k), after.get(k)) or (k in before) != (k in after):
                        found.setdefault((k,), (before.get(k), after.get(k)))
            elif key not in found:
                found[key] = (_at(before, key), _at(after, key))
    return sorted(((k, b, a) for k, (b, a) in found.items()), key=lambda x: x[0])


def _at(tree: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    node: Any = tree
    for k in keys:
        if not isinstance(node, Mapping) or k not in node:
            return None
        node = node[k]
    return node


def config_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Per TOML key (`config.server.workers`) what differs: (path, before, after), sorted by path."""
    if before is None:
        return [("config", None, "(new file)")]
    return [("config." + ".".join(keys), b, a) for keys, b, a in _config_diff(before, after)]


def unit_changes(before_text: str | None, after_text: str) -> list[tuple[str, Any, Any]]:
    """Per unit key, mapped to the spec field it comes from (`MemoryMax` → `limits.memory_max`)."""
    if before_text is None:
        return [("unit", None, "(new unit)")]
    return [(label, b, a) for label, _, b, a in _unit_diff(before_text, after_text)]


def _unit_diff(before_text: str, after_text: str) -> list[tuple[str, str, Any, Any]]:
    """(label, unit key, before, after) per unit key that differs."""
    b, a = _unit(before_text), _unit(after_text)
    out: list[tuple[str, str, Any, Any]] = []
    for key in sorted(b.keys() | a.keys()):
        bv, av = b.get(key), a.get(key)
        if bv == av:
            continue
        spec_key = UNIT_KEYS.get(key)
        label = f"{spec_key} ({key})" if spec_key else f"unit.{key}"
        out.append((label, key, _one(bv), _one(av)))
    return out


def _one(v: list[str] | None) -> Any:
    if v is None:
        return None
    return v[0] if len(v) == 1 else v


def _strip_header(text: str | None) -> str | None:
    if text is not None and text.startswith(MANAGED_HEADER):
        return text[len(MANAGED_HEADER):]
    return text


# --------------------------------------------------------------------------------------------- run-time limits
_TIMESPAN = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s|min|h|d)")
_USEC = {"us": 1, "ms": 1000, "s": 1_000_000, "min": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}


def _timespan_usec(text: str) -> int | None:
    """systemd's time span (`500ms`, `1.500000s`, `1min 30s`) in µs; None when not one."""
    total, pos = 0.0, 0
    text = text.strip()
    for m in _TIMESPAN.finditer(text):
        if text[pos:m.start()].strip():
            return None
        total += float(m.group(1)) * _USEC[m.group(2)]
        pos = m.end()
    if pos == 0 or text[pos:].strip():
        return None
    return round(total)


@lru_cache(maxsize=1024)
def _norm_unit_value(key: str, value: str) -> int | str | None:
    """A unit file's limit as systemd reports it at run time: bytes, µs per s, a count, `infinity`,
    or None when it cannot be compared (percentages of RAM, odd syntax)."""
    if value == _INFINITY:
        return _INFINITY
    if key == "CPUQuota":
        if value.endswith("%"):
            try:
                return round(float(value[:-1]) * 10_000)
            except ValueError:
                return None
        return None
    if key == "TasksMax":
        return int(value) if value.isdigit() else None
    from reconciler.spec.units import parse_size

    try:
        b = parse_size(value)
    except ValueError:
        return None
    return b if isinstance(b, int) else None


@lru_cache(maxsize=1024)
def _norm_live(prop: str, value: str) -> int | str | None:
    if value == _INFINITY:
        return _INFINITY
    if prop == "CPUQuotaPerSecUSec":
        return _timespan_usec(value)
    return int(value) if value.isdigit() else None


_LIMIT_KEYS = tuple(key for _, key in LIVE_PROPS)
_LIMIT_LINE = re.compile(r"^[ \t]*(MemoryMax|MemoryHigh|TasksMax|CPUQuota)[ \t]*=[ \t]*(.*?)[ \t]*$", re.M)


@lru_cache(maxsize=4096)
def unit_limits(unit_text: str) -> dict[str, tuple[str, int | str | None]]:
    """The run-time limits a unit text sets: unit key → (value as written, value as systemd reports it).

    Cached per text, and found without parsing the whole unit (the converged fast path reads it).
    The last assignment wins and an empty one resets the key, as in systemd. When the last mention
    of each key is a plain `Key=value` line (units as recon renders them) str.rfind finds it; any
    other layout (indented, `Key = value`, the key in a comment or in StartupMemoryMax=) is read
    with a regex."""
    out: dict[str, tuple[str, int | str | None]] = {}
    for key in _LIMIT_KEYS:
        i = unit_text.rfind(key)
        if i < 0:
            continue
        start = i + len(key)
        if (i and unit_text[i - 1] != "\n") or unit_text[start:start + 1] != "=":
            return _unit_limits_slow(unit_text)
        end = unit_text.find("\n", start)
        value = (unit_text[start + 1:] if end < 0 else unit_text[start + 1:end]).strip()
        if value:
            out[key] = (value, _norm_unit_value(key, value))
    return out


def _unit_limits_slow(unit_text: str) -> dict[str, tuple[str, int | str | None]]:
    out: dict[str, tuple[str, int | str | None]] = {}
    for m in _LIMIT_LINE.finditer(unit_text):
        key, value = m.group(1), m.group(2)
        if value:
            out[key] = (value, _norm_unit_value(key, value))
        else:
            out.pop(key, None)
    return out


def _show_live(key: str, v: int | str) -> str:
    if v == _INFINITY or isinstance(v, str):
        return str(v)
    if key == "CPUQuota":
        return f"{v / 10_000:g}%"
    if key == "TasksMax":
        return str(v)
    return _human(v)


def _live_limits(d: DesiredService, o: ObservedService) -> list[tuple[str, str, Any, Any]]:
    """Limits changed at run time (`systemctl set-property`): the running value differs from what the
    unit file on the host and its drop-ins say. (A limit changed in the file itself is a unit change,
    and one set by a drop-in is that drop-in's change, not this.)"""
    props = o.props
    if not props or o.unit_text is None:
        return []
    want = unit_limits(d.unit_text)
    effective = o.unit_text + "".join("\n" + t for t in _dropins_in_order(o)) if o.dropins else o.unit_text
    seen = want if effective == d.unit_text else unit_limits(effective)
    out: list[tuple[str, str, Any, Any]] = []
    for prop, key in LIVE_PROPS:
        raw = props.get(prop)
        if not raw:
            continue
        live = _norm_live(prop, raw)
        if live is None:
            continue
        if key in seen:
            file_value = seen[key][1]
        elif key in _UNLIMITED_BY_DEFAULT:
            file_value = _INFINITY
        else:
            continue
        if file_value is None or live == file_value:
            continue
        after = want[key][0] if key in want else None
        out.append((f"{UNIT_KEYS[key]} (live {key})", UNIT_KEYS[key], _show_live(key, live), after))
    return out


# --------------------------------------------------------------------------------------------- drop-ins
# Settings in a drop-in that may carry a secret: shown without their value.
_HIDDEN_DROPIN_KEYS = frozenset({"Environment", "SetCredential", "SetCredentialEncrypted"})
DROPIN_FIELD = "unit.dropin"


def dropin_field(path: str) -> str:
    """The field path of a drop-in: `unit.dropin[NAME]` for /etc/systemd/system/UNIT.d/NAME and
    `unit.dropin[run/NAME]` for /run/systemd/system/UNIT.d/NAME. Apply matches the observed drop-ins
    of a service against these paths to know which files to remove."""
    name = path.rsplit("/", 1)[-1]
    return f"{DROPIN_FIELD}[{'run/' if path.startswith('/run/') else ''}{name}]"


def dropin_summary(text: str) -> str:
    """What a drop-in sets, on one line (`MemoryMax=80M; TasksMax=9`); values that may be secret hidden."""
    parts = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or line.startswith("["):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if key in _HIDDEN_DROPIN_KEYS:
            parts.append(f"{key}=(not shown)")
        else:
            parts.append(f"{key}={value.strip()}" if sep else key)
    return "; ".join(parts) or "(no settings)"


def _dropins_in_order(o: ObservedService) -> list[str]:
    """The drop-in texts in the order systemd applies them: by file name, a name in /etc hiding the
    same name in /run."""
    by_name: dict[str, str] = {}
    for path in sorted(o.dropins, key=lambda p: (p.startswith("/etc/"), p)):
        by_name[path.rsplit("/", 1)[-1]] = o.dropins[path]
    return [by_name[n] for n in sorted(by_name)]


def _dropin_fields(o: ObservedService) -> list[FieldChange]:
    """Each drop-in recon finds for its unit: drift (recon never writes one), removed by apply."""
    return sorted((FieldChange(dropin_field(p), dropin_summary(t), None, Kind.DRIFT, part=Part.DROPIN)
                   for p, t in o.dropins.items()),
                  key=lambda f: f.path)


def _human(n: int) -> str:
    for unit, f in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n and n % f == 0:
            return f"{n // f}{unit}"
    return str(n)


# --------------------------------------------------------------------------------------------- one service
def _healthy(d: DesiredService, o: ObservedService) -> bool:
    """No probe (no URL, unit not active, no curl) counts as no news; else the status must be the expected one."""
    return o.health is None or (o.health.code == d.health_status and o.health.problem is None)


def _want_health(d: DesiredService) -> str:
    """What a healthy answer is, as the plan shows it: `HTTP 200` and any `health.expect_json` fields."""
    from reconciler.healthjson import display

    fields = ", ".join(f"{k}={display(v)}" for k, v in d.health_expect_json)
    return f"HTTP {d.health_status}" + (f" with {fields}" if fields else "")


def _fast_converged(d: DesiredService, o: ObservedService, salt: str) -> bool:
    """The hot path: direct comparisons only; nothing is parsed for services that match."""
    props = o.props
    return (
        o.current == d.version
        and o.binary_sha == d.sha256
        and o.config_text == d.config_text
        and o.unit_text == d.unit_text
        and (props.get("ActiveState") == "active" if d.run != "stopped" else props.get("ActiveState") in _NOT_RUNNING)
        and props.get("NeedDaemonReload", "no") != "yes"
        and props.get("UnitFileState", "enabled") in (("enabled", "") if d.run != "stopped" else ("disabled", ""))
        and _healthy(d, o)
        and (o.running_version in (None, d.version))
        and o.env_hash == d.secrets_hash(salt)
        and not o.dropins
        and not _live_limits(d, o)
    )


def _kind(record: ServiceRecord | None, observed_value: Any, recorded_value: Any) -> Kind:
    """drift when recon applied something and the host no longer shows it."""
    if record is None or record.status == RecordStatus.IN_PROGRESS:
        return Kind.DESIRED
    return Kind.DRIFT if observed_value != recorded_value else Kind.DESIRED


def _applied(record: ServiceRecord | None) -> bool:
    return record is not None and record.status == RecordStatus.APPLIED


def _create(d: DesiredService, record: ServiceRecord | None, o: ObservedService | None = None) -> Change:
    fields = [FieldChange("version", None, d.version, part=Part.RELEASE),
              FieldChange("artifact.sha256", None, d.archive_sha256 or d.sha256, part=Part.RELEASE),   # as written
              FieldChange("config", None, "(new file)", part=Part.CONFIG), FieldChange("unit", None, "(new unit)")]
    if d.secret_names:
        fields.append(FieldChange("secrets", None, SECRET_MASK, sensitive=True, part=Part.SECRETS))
    drift = _applied(record)
    for f in fields:
        f.kind = Kind.DRIFT if drift else Kind.DESIRED
    if o is not None and o.dropins:     # drop-ins left for a unit that is gone would apply to the new one
        fields += [f for f in _dropin_fields(o) if not _ignored(f.path, d.ignore_drift)]
    reason = "service is not on the host" + (" (removed outside recon)" if drift else "")
    effect = Effect.START
    if d.run == "stopped":
        reason, effect = reason + "; run: stopped, so it is installed, not started", Effect.NONE
    return Change(d.address, d.host, d.service, Action.CREATE, reason, effect, fields=fields, drift=drift,
                  to_version=d.version)


def plan_service(d: DesiredService, o: ObservedService, record: ServiceRecord | None, salt: str,
                 refresh_only: bool = False) -> Change | None:
    """The change for one service on one host, or None when it is converged.

    A Change with action "none" means: it differs only in fields listed under `ignore_drift`.
    """
    if not o.exists:
        change = _create(d, record, o)
        if refresh_only and not change.drift:
            return None
        return change
    if _fast_converged(d, o, salt):
        confirm = _unconfirmed(d, o, record, salt)
        if confirm is None or refresh_only:
            return None
        return Change(d.address, d.host, d.service, Action.RESTART, _CONFIRM_REASON, Effect.RESTART, fields=[confirm],
                      from_version=o.current, to_version=d.version)

    fields: list[FieldChange] = []
    rec = record
    applied = _applied(rec)
    # release: version and binary
    if o.current != d.version:
        fields.append(FieldChange("version", o.current, d.version,
                                  _kind(rec, o.current, rec.version if rec else None), part=Part.RELEASE))
    elif o.binary_sha != d.sha256:
        # an archive release is compared by its tree digest (reconciler/archive.py), a file by its sha256
        fields.append(FieldChange("artifact.tree" if d.entrypoint else "artifact.sha256", o.binary_sha, d.sha256,
                                  _kind(rec, o.binary_sha, rec.sha256 if rec else None), part=Part.RELEASE))
    # config by TOML key
    if o.config_text != d.config_text:
        fields += _config_fields(d, o, rec)
    # unit by key (the release path in ExecStart follows the version: not a change of its own)
    if o.unit_text != d.unit_text:
        fields += _unit_fields(d, o, rec)
    fields += _dropin_fields(o)
    # secrets (a salted fingerprint only; values never leave memory)
    want_env = d.secrets_hash(salt)
    if o.env_hash != want_env:
        kind = _kind(rec, o.env_hash, rec.env_hash if rec else None)
        fields.append(FieldChange("secrets", SECRET_MASK if o.env_hash else None,
                                  SECRET_MASK if want_env else None, kind, sensitive=True, part=Part.SECRETS))
    # run-time facts
    runtime_kind = Kind.DRIFT if applied else Kind.DESIRED
    for path, spec_path, b, a in _live_limits(d, o):
        fields.append(FieldChange(path, b, a, runtime_kind, part=Part.LIVE, spec_path=spec_path))
    props = o.props
    if o.unit_text == d.unit_text and props.get("NeedDaemonReload") == "yes":
        fields.append(FieldChange("unit.loaded", "outdated (daemon-reload pending)", "current", runtime_kind))
    active = props.get("ActiveState", "unknown")
    if d.run == "stopped":             # deployed, not started, not enabled (the platform's "Planned")
        if active not in _NOT_RUNNING:
            fields.append(FieldChange("state", active, "stopped (run: stopped)", runtime_kind, part=Part.RUNTIME))
        if props.get("UnitFileState", "disabled") not in ("disabled", ""):
            fields.append(FieldChange("enabled", props.get("UnitFileState"), "disabled", runtime_kind,
                                      part=Part.RUNTIME))
    elif active != "active":
        sub = props.get("SubState", "")
        by = rec.stopped_by if rec is not None else None
        why = (f" (stopped by recon stop: {by.get('user', '?')}, {by.get('time', '?')[:19].replace('T', ' ')}"
               + (f", {by['reason']!r}" if by.get("reason") else "") + ")") if by else ""
        fields.append(FieldChange("state", f"{active}" + (f" ({sub})" if sub and sub != active else "") + why,
                                  "active", Kind.DRIFT if by else runtime_kind, part=Part.RUNTIME))
    elif not _healthy(d, o):
        assert o.health is not None
        fields.append(FieldChange("health", o.health.summary(), _want_health(d), runtime_kind,
                                  part=Part.RUNTIME))
    if d.run != "stopped" and props.get("UnitFileState", "enabled") not in ("enabled", ""):
        fields.append(FieldChange("enabled", props.get("UnitFileState"), "enabled", runtime_kind, part=Part.RUNTIME))
    running = o.running_version
    if active == "active" and running is not None and running != d.version and o.current == d.version:
        fields.append(FieldChange("running_version", running, d.version, runtime_kind, part=Part.RUNTIME))
    if not any(f.path in _RUNTIME_PATHS[:3] for f in fields):     # no restart planned yet
        confirm = _unconfirmed(d, o, rec, salt)
        if confirm is not None:
            fields.append(confirm)

    # ignore_drift
    kept: list[FieldChange] = []
    ignored = False
    for f in fields:
        if f.kind == Kind.DRIFT and d.ignore_drift and _ignored(f.key, d.ignore_drift):
            ignored = True
            continue
        kept.append(f)
    if refresh_only:
        kept = [f for f in kept if f.kind == Kind.DRIFT]
    if not kept:
        return Change(d.address, d.host, d.service, Action.NONE, "", Effect.NONE) if ignored else None

    action, effect, reason = _decide(d, o, kept)
    if d.run == "stopped":             # nothing starts it: a running one is stopped, the rest stay down
        effect = Effect.STOP if o.props.get("ActiveState", "unknown") not in _NOT_RUNNING else Effect.NONE
        if action == Action.RESTART:
            action, reason = Action.UPDATE, f"run: stopped, but the unit is {o.props.get('ActiveState')}"
    return Change(d.address, d.host, d.service, action, reason, effect, fields=kept,
                  drift=any(f.kind == Kind.DRIFT for f in kept), from_version=o.current, to_version=d.version)


_CONFIRM_REASON = "the last apply did not finish: restart to confirm it (health-gated)"


def _unconfirmed(d: DesiredService, o: ObservedService, rec: ServiceRecord | None, salt: str
                 ) -> FieldChange | None:
    """The host has the spec's release and files, but recon's record says the apply that put them there
    did not finish (`in-progress`: killed between switching and the health check), or it records other
    files (killed after writing them, before recording). Whether the running process loaded them is
    unknown: a confirming restart, health-gated, settles it. Without a record (a host set up by hand)
    there is nothing to confirm."""
    if rec is None or rec.status not in (RecordStatus.IN_PROGRESS, RecordStatus.APPLIED):
        return None
    want_env = d.secrets_hash(salt)
    if not (o.current == d.version and o.binary_sha == d.sha256 and o.config_text == d.config_text
            and o.unit_text == d.unit_text and o.env_hash == want_env):
        return None                      # the files differ: the plan changes them (and restarts) anyway
    if rec.status == RecordStatus.IN_PROGRESS:
        return FieldChange("last_apply", "interrupted", "confirmed", part=Part.RUNTIME)
    if (rec.version, rec.sha256, rec.config_text, rec.unit_text, rec.env_hash) == (
            d.version, d.sha256, d.config_text, d.unit_text, want_env):
        return None
    return FieldChange("last_apply", "not recorded", "confirmed", part=Part.RUNTIME)


def _config_fields(d: DesiredService, o: ObservedService, rec: ServiceRecord | None) -> list[FieldChange]:
    whole = _kind(rec, o.config_text, rec.config_text if rec else None)
    if o.config_text is None:
        return [FieldChange("config", None, "(new file)", whole, part=Part.CONFIG)]
    before = parse_config(_strip_header(o.config_text))
    if before is None:
        return [FieldChange("config", "(not valid TOML)", "(rendered from the spec)", whole, part=Part.CONFIG)]
    after = parse_config(_strip_header(d.config_text))
    if after is None:          # cannot happen with a rendered config; compare with the spec's data
        after = d.config
    diff = _config_diff(before, after)
    if not diff:               # same data, different text (comments, order, formatting)
        return [FieldChange("config", "(edited text)", "(rendered from the spec)", whole, part=Part.CONFIG)]
    recorded = parse_config(_strip_header(rec.config_text)) if whole == Kind.DRIFT and rec else None
    out = []
    for keys, b, a in diff:
        kind = whole
        if recorded is not None:   # a key drifted when the host's value is not the one recon applied
            kind = Kind.DRIFT if not _same(_dig(recorded, keys), _dig(before, keys)) else Kind.DESIRED
        out.append(FieldChange("config." + ".".join(keys), b, a, kind, part=Part.CONFIG))
    return out


def _unit_fields(d: DesiredService, o: ObservedService, rec: ServiceRecord | None) -> list[FieldChange]:
    whole = _kind(rec, o.unit_text, rec.unit_text if rec else None)
    if o.unit_text is None:
        return [FieldChange("unit", None, "(new unit)", whole)]
    seen = o.unit_text
    if o.current and o.current != d.version:
        seen = seen.replace(f"/releases/{o.current}/", f"/releases/{d.version}/")
    recorded = _unit(rec.unit_text) if whole == Kind.DRIFT and rec and rec.unit_text else None
    observed = _unit(o.unit_text)
    out = []
    for label, key, b, a in _unit_diff(seen, d.unit_text):
        kind = whole
        if recorded is not None:   # a key drifted when the host's line is not the one recon applied
            kind = Kind.DRIFT if recorded.get(key) != observed.get(key) else Kind.DESIRED
        out.append(FieldChange(label, b, a, kind, spec_path=UNIT_KEYS.get(key)))
    return out


_MISSING = object()


def _dig(d: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return _MISSING
        d = d[k]
    return d


def _ignored(path: str, patterns: tuple[str, ...]) -> bool:
    """`limits` covers `limits.memory_max` (a live limit's `spec_path` too); `unit.dropin` covers every
    `unit.dropin[NAME]`, and `unit.dropin[NAME]` that one drop-in."""
    return any(path == p or path.startswith(p + ".") or path.startswith(p + "[") for p in patterns)


def _decide(d: DesiredService, o: ObservedService, fields: list[FieldChange]) -> tuple[Action, Effect, str]:
    """The action, its effect on the process, and the reason, from the parts the fields belong to."""

    def words(f: FieldChange) -> str:
        if f.sensitive:
            return f"{f.path} changed"
        if f.path == "version":
            return f"version {f.before} → {f.after}"
        if f.part == Part.DROPIN and f.after is None:
            return f"drop-in {f.path[len(DROPIN_FIELD) + 1:-1]} ({_short(f.before)}) to be removed"
        return f"{f.key} {_short(f.before)} → {_short(f.after)}"

    drift_note = " (changed outside recon)" if any(f.kind == Kind.DRIFT for f in fields) else ""
    release = [f for f in fields if f.part == Part.RELEASE]
    if release:
        version = next((f for f in release if f.path == "version"), None)
        if version is not None:
            return Action.REPLACE, Effect.RESTART, words(version)
        what = "release tree differs from the archive" if release[0].path == "artifact.tree" else \
            "binary differs from the artifact"
        return Action.REPLACE, Effect.RESTART, what + drift_note
    live_fields = [f for f in fields if f.part == Part.LIVE]
    runtime = [f for f in fields if f.part == Part.RUNTIME]
    file_fields = [f for f in fields if f.part not in (Part.LIVE, Part.RUNTIME)]
    if file_fields:
        only_config = all(f.part == Part.CONFIG for f in file_fields)
        if only_config and d.reload_signal and not runtime:
            return Action.RELOAD, Effect.RELOAD, _reason(file_fields, words) + drift_note
        return Action.UPDATE, Effect.RESTART, _reason(file_fields, words) + drift_note
    if live_fields and not runtime:
        return Action.UPDATE, Effect.DAEMON_RELOAD, _reason(live_fields, words) + " (set at run time)"
    f = min(runtime, key=lambda x: _RUNTIME_PATHS.index(x.path))
    if f.path == "last_apply":
        return Action.RESTART, Effect.RESTART, _CONFIRM_REASON
    if f.path == "state":
        return Action.RESTART, Effect.RESTART, f"unit is {f.before}"
    if f.path == "health":
        return Action.RESTART, Effect.RESTART, f"health check fails ({f.before})"
    if f.path == "running_version":
        return Action.RESTART, Effect.RESTART, f"running {f.before}, installed {f.after}"
    # only "enabled" (maybe with run-time limits): nothing to restart
    if live_fields:
        return Action.UPDATE, Effect.DAEMON_RELOAD, _reason([*live_fields, f], words)
    return Action.UPDATE, Effect.NONE, f"unit is {f.before}, not enabled"


def _reason(fields: list[FieldChange], words: Any) -> str:
    parts = [words(f) for f in fields[:2]]
    more = len(fields) - 2
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _short(v: Any) -> str:
    if v is None:
        return "(none)"
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------------- the plan
def make_plan(desired: Mapping[str, Mapping[str, DesiredService]], observed: Mapping[str, ObservedHost],
              state: State, salt: str, *, refresh_only: bool = False, targets: set[str] | None = None,
              hosts: set[str] | None = None) -> Plan:
    """Plan every host and service in the scope; pure."""
    plan = Plan(refresh_only=refresh_only)
    deps: dict[str, list[str]] = {}
    for svcs in desired.values():
        for name, d in svcs.items():
            deps.setdefault(name, list(d.depends_on))
    plan.waves = waves_of(deps)
    wave_of = {name: i for i, wave in enumerate(plan.waves, 1) for name in wave}
    for host, svcs in desired.items():
        if hosts is not None and host not in hosts:
            continue
        obs = observed.get(host)
        if obs is None or obs.error:
            plan.errors.append(obs.error if obs and obs.error else f"host {host!r} was not observed")
            continue
        records = state.hosts.get(host, {})
        seen = obs.services
        for name, d in svcs.items():
            if targets is not None and name not in targets:
                continue
            o = seen.get(name)
            change = plan_service(d, o if o is not None else ObservedService(name), records.get(name), salt,
                                  refresh_only)
            if change is None:
                continue
            if change.action == Action.NONE:
                plan.ignored_drift.append(change.address)
                continue
            change.wave = wave_of.get(name, 0)
            plan.changes.append(change)
        # services recon applied here that the spec no longer places on this host
        for name, rec in sorted(records.items()):
            if name in svcs or (targets is not None and name not in targets) or refresh_only:
                continue
            o = seen.get(name)
            if o is not None and not o.exists:
                continue
            installed = o.current if o is not None and o.current else rec.version
            plan.changes.append(Change(f"{host}/{name}", host, name, Action.DELETE, "no longer in the spec",
                                       Effect.STOP,
                                       wave=len(plan.waves) + 1,
                                       fields=[FieldChange("version", installed, None)],
                                       from_version=installed))
            if problem := record_problem(name, rec):
                plan.refused.append(f"{host}/{name}: not deleting it: {problem} (was recon's state edited by hand?)")
        if targets is None:
            file_change, file_refused = plan_logrotate(host, svcs, obs, state.owned.get(host, []), len(plan.waves) + 1)
            if file_change is not None and (not refresh_only or file_change.drift):
                plan.changes.append(file_change)
            plan.refused += file_refused
        if not refresh_only:
            actions = {c.service: c.action for c in plan.changes
                       if c.host == host and c.action != Action.DELETE and c.service}
            if actions:
                resources, refused = plan_host(host, svcs, actions, obs, state.owned.get(host, []), records)
                plan.resources += resources
                plan.refused += refused
        if obs.unit_files:
            managed = {d.unit_name for d in svcs.values()} | {r.unit_name for r in records.values()}
            for unit in obs.unit_files:
                if unit not in managed:
                    plan.notes.append(f"{host}: {unit} exists but recon does not manage it (left alone)")
        for name, d in svcs.items():
            o = seen.get(name)
            if o is not None and o.props.get("DropInPaths") and (targets is None or name in targets):
                plan.notes.extend(_dropin_notes(host, d, o))
    for host in sorted(set(state.hosts) - set(desired)):
        if hosts is None and state.hosts[host]:
            names = ", ".join(sorted(state.hosts[host]))
            plan.notes.append(f"{host}: in recon's state ({names}) but not in the spec; left alone")
    plan.changes.sort(key=lambda c: (c.wave, c.host, c.service))
    return plan


# --------------------------------------------------------------------------------------------- host-wide files
def plan_logrotate(host: str, svcs: Mapping[str, DesiredService], obs: ObservedHost, owned: list[Owned], wave: int
                   ) -> tuple[Change | None, list[str]]:
    """The logrotate file of `logs:` on one host, planned like every recon file: created when missing,
    rewritten when it differs (drift when it is not the text recon recorded writing), deleted when no
    service wants it any more, and only if recon wrote it. A file recon did not write is refused, never
    overwritten. (change or None, refusals). The change has no service: `service` is empty."""
    path = LOGROTATE_PATH
    want = logrotate_text(svcs)
    have = obs.host_files.get(path)
    rec = next((o for o in owned if o.kind == "file" and o.name == path), None)
    address = f"{host}:{path}"
    users = sorted(d.service for d in svcs.values() if d.logs is not None)

    def change(action: Action, reason: str, before: Any, after: Any, kind: Kind) -> Change:
        return Change(address, host, "", action, reason, Effect.NONE, wave=wave, drift=kind == Kind.DRIFT,
                      fields=[FieldChange("logrotate", before, after, kind, part=Part.HOST_FILE)])

    if want is not None and have == want:
        return None, []
    edited = rec is not None and have is not None and sha256_text(have) != rec.sha256
    if want is None:
        if have is None or rec is None:
            return None, []      # nothing there, or not recon's: left alone
        return change(Action.DELETE, "no service on the host has `logs:` any more", _file_summary(have), None,
                      Kind.DRIFT if edited else Kind.DESIRED), []
    if have is None:
        kind = Kind.DRIFT if rec is not None else Kind.DESIRED
        return change(Action.CREATE, "logrotate file is not on the host" + (" (removed outside recon)" if rec else "")
                      + f"; rotates the logs of {', '.join(users)}", None, _file_summary(want), kind), []
    if rec is None:
        return None, [f"{host}: {path} exists and recon did not write it: recon does not overwrite it (move it "
                      "away, or drop `logs.rotate` from the spec)"]
    kind = Kind.DRIFT if edited else Kind.DESIRED
    why = "logrotate file was edited outside recon" if edited else "logs.rotate changed"
    return change(Action.UPDATE, why, _file_summary(have), _file_summary(want), kind), []


def _file_summary(text: str) -> str:
    """A file in a plan: the stanza heads and their first directive (`/var/log/p/a.log {daily, rotate 30}`)."""
    heads = [line.rstrip(" {").strip() for line in text.splitlines() if line.rstrip().endswith("{")]
    return f"{len(text.splitlines())} lines, sha256 {sha256_text(text)[:12]}" + (
        f": {'; '.join(heads)}" if heads else "")


def _dropin_notes(host: str, d: DesiredService, o: ObservedService) -> list[str]:
    """Drop-ins systemd loads from elsewhere (/usr/lib, `service.d/` for all services): noted, left alone.
    Those in /etc and /run/systemd/system/UNIT.d/ are planned as changes (`_dropin_fields`), and
    `systemctl set-property` ones (system.control) as run-time limits."""
    out = []
    for path in o.props.get("DropInPaths", "").split():
        if "/system.control/" in path or path in o.dropins:
            continue
        out.append(f"{host}: {d.unit_name} has a drop-in recon does not manage: {path} (left alone)")
    return out
