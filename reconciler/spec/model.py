"""The typed, validated spec: hosts and services with every default applied and units parsed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.spec.merge import Merged
from reconciler.spec.units import parse_count, parse_duration, parse_percent, parse_size

UNIT_PREFIX = "provisioning-"

BUILTIN_DEFAULTS: dict[str, Any] = {
    "user": "provisioning",
    "install_dir": "/opt/provisioning",
    "config_dir": "/etc/provisioning",
    "data_dir": "/var/lib/provisioning/{service}",
    "keep_releases": 3,
    "type": "simple",
    "args": [],
    "depends_on": [],
    "config": {},
    "env": {},
    "secrets": {},
    "limits": {},
    "restart": {"policy": "on-failure", "delay_s": 10},
    "hardening": {"no_new_privileges": True, "private_tmp": True, "protect_system": "strict",
                  "protect_home": True},
    "health": {"timeout_s": 30, "interval_s": 1, "expect_status": 200},
    "rollout": {"batch_size": 1, "max_failures": 0},
    "ignore_drift": [],
}


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    connector: str = "ssh"
    port: int = 22
    user: str | None = None
    ssh_key: str | None = None
    known_hosts: str | None = None

    @property
    def is_local(self) -> bool:
        return self.connector == "local"


@dataclass(frozen=True)
class Secret:
    name: str
    from_env: str | None = None
    from_file: str | None = None

    @property
    def source(self) -> str:
        return f"env {self.from_env}" if self.from_env else f"file {self.from_file}"


@dataclass(frozen=True)
class Limits:
    memory_max: int | str | None = None
    memory_high: int | str | None = None
    cpu_quota: float | None = None
    tasks_max: int | str | None = None
    nofile: int | str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LogPolicy:
    """`logs: {dir, rotate: {period, keep, compress}}`: the service writes `{dir}/{service}.log`, rotated by
    logrotate (defaults: daily, keep 30, compressed)."""

    dir: str
    period: str = "daily"
    keep: int = 30
    compress: bool = True


def _log_policy(name: str, raw: Any) -> LogPolicy | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("dir"), str):
        return None
    rotate = raw.get("rotate") or {}
    return LogPolicy(raw["dir"].replace("{service}", name).rstrip("/") or "/", str(rotate.get("period", "daily")),
                     int(rotate.get("keep", 30)), bool(rotate.get("compress", True)))


@dataclass(frozen=True)
class Service:
    name: str
    version: str
    sha256: str
    artifact_path: Path | None
    artifact_url: str | None
    hosts: tuple[str, ...]
    port: int | None
    args: tuple[str, ...]
    depends_on: tuple[str, ...]
    config: dict[str, Any]
    env: dict[str, str]
    secrets: dict[str, Secret]
    limits: Limits
    health_url: str | None
    health_timeout_s: float
    health_interval_s: float
    health_status: int
    reload_signal: str | None
    user: str
    group: str
    install_dir: str
    config_dir: str
    data_dir: str
    keep_releases: int
    type: str
    restart_policy: str
    restart_delay_s: float | None
    watchdog_s: float | None
    hardening: dict[str, Any]
    batch_size: int | str
    max_failures: int
    ignore_drift: tuple[str, ...]
    description: str = ""
    metrics_url: str | None = None       # `metrics.http`; default http://127.0.0.1:{port}/metrics
    run: str = "running"                 # running: enabled and started; stopped: deployed, not started
    stop_timeout_s: float | None = None  # `stop.timeout_s` → TimeoutStopSec=
    entrypoint: str | None = None        # `artifact.entrypoint`: the artifact is an archive; ExecStart runs this
    health_expect_json: tuple[tuple[str, Any], ...] = ()   # `health.expect_json`: top-level fields required
    external_deps: tuple[str, ...] = ()  # the `external:` names in its depends_on (not in `depends_on`)
    logs: LogPolicy | None = None        # `logs`: the log directory and its rotation
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def unit_name(self) -> str:
        return f"{UNIT_PREFIX}{self.name}.service"

    @property
    def service_dir(self) -> str:
        return f"{self.install_dir}/{self.name}"

    @property
    def release_dir(self) -> str:
        return f"{self.service_dir}/releases/{self.version}"

    @property
    def config_path(self) -> str:
        return f"{self.config_dir}/{self.name}.toml"

    @property
    def log_file(self) -> str | None:
        return f"{self.logs.dir}/{self.name}.log" if self.logs else None


@dataclass(frozen=True)
class External:
    """Something recon does not deploy but services depend on (`external:`): recon reads its unit's state and
    its health, and never starts, stops, modifies or deletes it."""

    name: str
    hosts: tuple[str, ...]
    unit: str | None = None               # a systemd unit on those hosts (`.service` added when no suffix)
    health_url: str | None = None
    health_status: int = 200
    health_expect_json: tuple[tuple[str, Any], ...] = ()
    description: str = ""


@dataclass
class Spec:
    """The whole validated spec. `merged` keeps origins for explain and error messages."""

    hosts: dict[str, Host]
    services: dict[str, Service]
    merged: Merged
    externals: dict[str, External] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return self.merged.files


def _host(name: str, raw: dict[str, Any]) -> Host:
    connector = raw.get("connector", "ssh")
    address = raw.get("address") or ("127.0.0.1" if connector == "local" else name)
    return Host(name=name, address=str(address), connector=connector, port=int(raw.get("port", 22)),
                user=raw.get("user"), ssh_key=raw.get("ssh_key"), known_hosts=raw.get("known_hosts"))


def with_builtin_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """A service's mapping (its `defaults:` already merged in) over the built-in defaults, one level deep."""
    out: dict[str, Any] = {}
    for key, value in BUILTIN_DEFAULTS.items():
        out[key] = dict(value) if isinstance(value, dict) else value
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def build_service(name: str, raw: dict[str, Any], all_hosts: list[str], artifact_base: Path | None,
                  externals: frozenset[str] = frozenset()) -> Service:
    """Build a Service from its merged mapping; assumes schema and semantic checks passed. Names in
    `depends_on` that are in `externals` go to `external_deps`."""
    s = with_builtin_defaults(raw)
    art = s.get("artifact") or {}
    path = art.get("path")
    artifact_path = None
    if path:
        p = Path(path).expanduser()
        artifact_path = p if p.is_absolute() or artifact_base is None else (artifact_base / p)
    limits_raw = s["limits"]
    limits = Limits(
        memory_max=parse_size(limits_raw["memory_max"]) if "memory_max" in limits_raw else None,
        memory_high=parse_size(limits_raw["memory_high"]) if "memory_high" in limits_raw else None,
        cpu_quota=parse_percent(limits_raw["cpu_quota"]) if "cpu_quota" in limits_raw else None,
        tasks_max=parse_count(limits_raw["tasks_max"]) if "tasks_max" in limits_raw else None,
        nofile=parse_count(limits_raw["nofile"]) if "nofile" in limits_raw else None,
        raw=dict(limits_raw),
    )
    restart = s["restart"]
    health = s["health"]
    rollout = s["rollout"]
    return Service(
        name=name,
        version=str(s.get("version", "")),
        sha256=str(art.get("sha256", "")),
        artifact_path=artifact_path,
        artifact_url=art.get("url"),
        hosts=tuple(s.get("hosts") or all_hosts),
        port=s.get("port"),
        args=tuple(str(a) for a in s["args"]),
        depends_on=tuple(x for x in s["depends_on"] if x not in externals),
        config=s["config"],
        env={k: _env_str(v) for k, v in s["env"].items()},
        secrets={k: Secret(k, v.get("from_env"), v.get("from_file")) for k, v in s["secrets"].items()},
        limits=limits,
        health_url=health.get("http"),
        health_timeout_s=parse_duration(health.get("timeout_s", 30)),
        health_interval_s=parse_duration(health.get("interval_s", 1)),
        health_status=int(health.get("expect_status", 200)),
        reload_signal=(s.get("reload") or {}).get("signal"),
        user=s["user"],
        group=s.get("group") or s["user"],
        install_dir=s["install_dir"].rstrip("/") or "/",
        config_dir=s["config_dir"].rstrip("/") or "/",
        data_dir=s["data_dir"].replace("{service}", name),
        keep_releases=int(s["keep_releases"]),
        type=s["type"],
        restart_policy=restart.get("policy", "on-failure"),
        restart_delay_s=parse_duration(restart["delay_s"]) if "delay_s" in restart else None,
        watchdog_s=parse_duration(restart["watchdog_s"]) if "watchdog_s" in restart else None,
        hardening=dict(s["hardening"]),
        batch_size=rollout.get("batch_size", 1),
        max_failures=int(rollout.get("max_failures", 0)),
        ignore_drift=tuple(s["ignore_drift"]),
        description=s.get("description", ""),
        metrics_url=(s.get("metrics") or {}).get("http")
        or ("http://127.0.0.1:{port}/metrics" if s.get("port") is not None else None),
        run=s.get("run", "running"),
        stop_timeout_s=parse_duration((s.get("stop") or {})["timeout_s"]) if "timeout_s" in (s.get("stop") or {})
        else None,
        entrypoint=art.get("entrypoint"),
        health_expect_json=tuple((health.get("expect_json") or {}).items()),
        external_deps=tuple(x for x in s["depends_on"] if x in externals),
        logs=_log_policy(name, s.get("logs")),
        raw=raw,
    )


def _env_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_spec(merged: Merged) -> Spec:
    data = merged.data
    hosts = {name: _host(name, raw or {}) for name, raw in (data.get("hosts") or {}).items()}
    externals = {name: build_external(name, raw or {}) for name, raw in (data.get("external") or {}).items()}
    services: dict[str, Service] = {}
    for name, raw in (data.get("services") or {}).items():
        origin = merged.origin_of(("services", name, "artifact", "path"))
        base = Path(origin.file).parent if origin else None
        services[name] = build_service(name, raw, list(hosts), base, frozenset(externals))
    return Spec(hosts=hosts, services=services, merged=merged, externals=externals)


def unit_of(unit: str) -> str:
    """A unit name as systemd knows it: `surrealdb` is `surrealdb.service`."""
    suffixes = (".service", ".socket", ".target", ".mount", ".timer", ".path", ".scope", ".slice", ".swap",
                ".device", ".automount")
    return unit if unit.endswith(suffixes) else unit + ".service"


def build_external(name: str, raw: dict[str, Any]) -> External:
    health = raw.get("health") or {}
    return External(name=name, hosts=tuple(raw.get("hosts") or ()),
                    unit=unit_of(raw["unit"]) if raw.get("unit") else None,
                    health_url=health.get("http"), health_status=int(health.get("expect_status", 200)),
                    health_expect_json=tuple((health.get("expect_json") or {}).items()),
                    description=str(raw.get("description", "")))
