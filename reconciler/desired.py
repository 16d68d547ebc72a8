"""Desired state per host and service: the files recon installs (config, unit, secrets) and the
comparable fields the plan diffs. Pure: no I/O except reading secret sources given to it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.errors import ReconError
from reconciler.spec.model import UNIT_PREFIX, Host, LogPolicy, Service, Spec
from reconciler.spec.template import expand, expand_tree
from reconciler.spec.units import format_seconds

if TYPE_CHECKING:
    from reconciler.archive import Entry

MANAGED_HEADER = "# Managed by recon. Edits made here are reported as drift and undone by `recon apply`.\n"
UNIT_DIR = "/etc/systemd/system"
SECRET_MASK = "(sensitive)"

# spec field → systemd unit key, for reasons like "limits.memory_max 4G → 2G"
UNIT_KEYS: dict[str, str] = {
    "MemoryMax": "limits.memory_max",
    "MemoryHigh": "limits.memory_high",
    "CPUQuota": "limits.cpu_quota",
    "TasksMax": "limits.tasks_max",
    "LimitNOFILE": "limits.nofile",
    "Restart": "restart.policy",
    "RestartSec": "restart.delay_s",
    "TimeoutStopSec": "stop.timeout_s",
    "WatchdogSec": "restart.watchdog_s",
    "NoNewPrivileges": "hardening.no_new_privileges",
    "PrivateTmp": "hardening.private_tmp",
    "ProtectSystem": "hardening.protect_system",
    "ProtectHome": "hardening.protect_home",
    "ExecStart": "args",
    "User": "user",
    "Group": "group",
    "Type": "type",
    "Environment": "env",
    "EnvironmentFile": "secrets",
    "Requires": "depends_on",
    "After": "depends_on",
    "Wants": "depends_on",
    "ExecReload": "reload.signal",
    "ReadWritePaths": "data_dir, logs.dir",
    "Description": "description",
}


def sha256_text(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def salted_hash(salt: str, data: bytes) -> str:
    """How secret-bearing files are fingerprinted: never a bare hash of a secret."""
    return hashlib.sha256(salt.encode() + b"\0" + data).hexdigest()


def _bool(v: Any) -> str:
    if v is True or v == "true":
        return "yes"
    if v is False or v == "false":
        return "no"
    return str(v)


def _size(v: int | str) -> str:
    if isinstance(v, str):
        return v
    for unit, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if v and v % factor == 0:
            return f"{v // factor}{unit}"
    return str(v)


def _pct(v: float) -> str:
    return f"{int(v)}%" if v == int(v) else f"{v}%"


# --- systemd escaping (verified on systemd 252; docs/design.md "Secrets and unit escaping") ----------------
# Characters that end a line for systemd's unit and env-file readers (\n, \r, NUL) or for Python's
# str.splitlines (which the plan used to read units with). None of them may appear raw in a unit line.
LINE_BREAKS = frozenset("\n\r\0\v\f\x1c\x1d\x1e\x85\u2028\u2029")
_BARE = re.compile(r"[A-Za-z0-9@%+=:,./_-]+")     # shlex's safe set: written without quotes
ENV_VALUE_MAX = 131072 - 1   # the kernel's MAX_ARG_STRLEN, less the NUL: the most one NAME=value can be


def _c_escape(ch: str) -> str:
    r"""One character as a C escape systemd's unquoting understands (\xNN below 0x80, \u/\U above)."""
    o = ord(ch)
    if o < 0x80:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{o:02x}")
    return f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"


def unit_quote(text: str, exec_line: bool = False) -> str:
    """`text` as one double-quoted word of a unit line (ExecStart=, Environment=, ReadWritePaths=): `\\` and
    `"` escaped, `%` doubled (specifiers), `$` doubled on Exec lines (variable expansion), and every
    character that is not printable or could end a line written as a C escape. systemd reads it back
    exactly (ExecStart= and Environment= unquote with C escapes)."""
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "%":
            out.append("%%")
        elif ch == "$" and exec_line:
            out.append("$$")
        elif ch in LINE_BREAKS or not ch.isprintable():
            out.append(_c_escape(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def unit_text_value(text: str) -> str:
    """A value systemd takes verbatim apart from specifiers (Description=, EnvironmentFile=): `%` doubled.
    Line breaks cannot be escaped there; validation refuses them, and this refuses them again."""
    if any(ch in LINE_BREAKS for ch in text):
        raise ValueError("a line break cannot be written into a unit line")
    return text.replace("%", "%%")


def _env_quote(key: str, value: str) -> str:
    return unit_quote(f"{key}={value}")


def _exec_quote(arg: str) -> str:
    if _BARE.fullmatch(arg):
        return arg.replace("%", "%%")
    return unit_quote(arg, exec_line=True)


def _path_word(path: str, prefix: str = "") -> str:
    """A path for a space-separated path list (ReadWritePaths=), quoted when it needs to be."""
    word = prefix + path
    return word.replace("%", "%%") if _BARE.fullmatch(word) else unit_quote(word)


def env_file_line(name: str, value: str) -> str:
    """One `NAME="value"` line of an EnvironmentFile= that systemd reads back byte-exact: inside double
    quotes it honours only `\\"`, `\\\\`, `\\$`, `` \\` `` and backslash-newline (a continuation), and keeps
    everything else (newlines, CR, tabs, `#`, `;`, `%`, leading and trailing spaces) as it is. The same
    four escapes make the line mean the same to a POSIX shell's double quotes."""
    escaped = "".join("\\" + ch if ch in '\\"$`' else ch for ch in value)
    return f'{name}="{escaped}"\n'


def secret_problem(value: str, name: str) -> str | None:
    """Why systemd cannot carry `value` as variable `name` (without showing it), or None."""
    if "\0" in value:
        return "it contains a NUL character, which no environment variable can hold"
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8 (systemd refuses to start a unit whose EnvironmentFile= holds such a value)"
    if len(name) + 1 + len(data) > ENV_VALUE_MAX:
        return (f"it is {len(data)} bytes long; the kernel limits one NAME=value to {ENV_VALUE_MAX} bytes "
                "and the service would fail to start")
    return None


@dataclass(frozen=True)
class DesiredService:
    """Everything recon wants on one host for one service. `secrets_text` never leaves memory."""

    host: str
    service: str
    version: str
    sha256: str
    unit_name: str
    unit_path: str
    unit_text: str
    config_path: str
    config_text: str
    env_path: str
    service_dir: str
    release_dir: str
    binary_path: str
    data_dir: str
    user: str
    group: str
    depends_on: tuple[str, ...]
    health_url: str | None
    health_timeout_s: float
    health_interval_s: float
    health_status: int
    reload_signal: str | None
    keep_releases: int
    config: dict[str, Any]
    secret_names: tuple[str, ...]
    secrets_text: str = field(default="", repr=False)
    ignore_drift: tuple[str, ...] = ()
    metrics_url: str | None = None
    run: str = "running"            # stopped: deployed, disabled, not started (the platform's "Planned")
    # an archive release (`artifact.entrypoint`): `sha256` is then the tree digest (`archive.tree_digest`), what
    # the host is observed as; `archive_sha256` the archive's own checksum from the spec
    entrypoint: str | None = None
    archive_sha256: str | None = None
    health_expect_json: tuple[tuple[str, Any], ...] = ()   # `health.expect_json` (reconciler.healthjson)
    logs: LogPolicy | None = None   # the log directory and its rotation (`logs`)
    log_file: str | None = None     # {logs.dir}/{service}.log, PROVISIONING_LOG_FILE in the unit

    @property
    def unit_sha(self) -> str:
        return sha256_text(self.unit_text)

    @property
    def config_sha(self) -> str:
        return sha256_text(self.config_text)

    def secrets_hash(self, salt: str) -> str | None:
        return salted_hash(salt, self.secrets_text.encode()) if self.secret_names else None

    @property
    def address(self) -> str:
        return f"{self.host}/{self.service}"


def template_values(svc: Service, host: Host) -> dict[str, Any]:
    return {
        "service": svc.name,
        "version": svc.version,
        "port": svc.port if svc.port is not None else "",
        "config_path": svc.config_path,
        "install_dir": svc.install_dir,
        "release_dir": svc.release_dir,
        "data_dir": svc.data_dir,
        "log_file": svc.log_file or "",
        "host": host.name,
        "address": host.address,
    }


def render_config(config: Mapping[str, Any]) -> str:
    import tomli_w

    return MANAGED_HEADER + tomli_w.dumps(dict(config))


def render_unit(svc: Service, values: Mapping[str, Any], binary_path: str, env_path: str,
                external_units: Sequence[str] = ()) -> str:
    """The systemd unit of `svc` (the platform's naming: provisioning-{service}.service). `external_units`:
    the units of the externals it depends on that run on the same host: `After=` and `Wants=` (not
    `Requires=`: their owner's stop or restart must not stop or restart recon's service; docs/design.md)."""
    deps = " ".join([*(f"{UNIT_PREFIX}{d}.service" for d in svc.depends_on), *external_units])
    wants = " ".join(["network-online.target", *external_units])
    lines = [
        f"# Managed by recon: {svc.name} {svc.version}. Edits are reported as drift.",
        "[Unit]",
        "Description=" + unit_text_value(f"Provisioning {svc.name}" + (f" ({svc.description})" if svc.description
                                                                        else "")),
        "After=network-online.target" + (f" {deps}" if deps else ""),
        f"Wants={wants}",
    ]
    if svc.depends_on:
        lines.append("Requires=" + " ".join(f"{UNIT_PREFIX}{d}.service" for d in svc.depends_on))
    lines += ["StartLimitIntervalSec=0", "", "[Service]", f"Type={svc.type}",
              f"User={svc.user}", f"Group={svc.group}"]
    args = [expand(a, values) for a in svc.args]
    lines.append("ExecStart=" + " ".join(_exec_quote(a) for a in [binary_path, *args]))
    if svc.reload_signal:
        lines.append(f"ExecReload=/bin/kill -{svc.reload_signal} $MAINPID")
    for key, value in sorted(svc.env.items()):
        lines.append("Environment=" + _env_quote(key, expand(value, values)))
    if svc.log_file and LOG_FILE_ENV not in svc.env:
        lines.append("Environment=" + _env_quote(LOG_FILE_ENV, svc.log_file))
    if svc.secrets:
        lines.append(f"EnvironmentFile={unit_text_value(env_path)}")
    lines.append(f"Restart={svc.restart_policy}")
    if svc.restart_delay_s is not None:
        lines.append(f"RestartSec={format_seconds(svc.restart_delay_s)}")
    if svc.stop_timeout_s is not None:
        lines.append(f"TimeoutStopSec={format_seconds(svc.stop_timeout_s)}")
    if svc.watchdog_s:
        lines.append(f"WatchdogSec={format_seconds(svc.watchdog_s)}")
    lim = svc.limits
    if lim.memory_max is not None:
        lines.append(f"MemoryMax={_size(lim.memory_max)}")
    if lim.memory_high is not None:
        lines.append(f"MemoryHigh={_size(lim.memory_high)}")
    if lim.cpu_quota is not None:
        lines.append(f"CPUQuota={_pct(lim.cpu_quota)}")
    if lim.tasks_max is not None:
        lines.append(f"TasksMax={lim.tasks_max}")
    if lim.nofile is not None:
        lines.append(f"LimitNOFILE={lim.nofile}")
    h = svc.hardening
    for key, unit_key in (("no_new_privileges", "NoNewPrivileges"), ("private_tmp", "PrivateTmp"),
                          ("protect_system", "ProtectSystem"), ("protect_home", "ProtectHome")):
        if key in h:
            lines.append(f"{unit_key}={_bool(h[key])}")
    lines.append("ReadWritePaths=" + _path_word(svc.data_dir, "-")
                 + (" " + _path_word(svc.logs.dir, "-") if svc.logs else ""))
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def render_secrets(svc: Service, lookup: Callable[[str, Any], str]) -> str:
    """The EnvironmentFile text; `lookup(name, secret)` returns the value (from env or file). A value
    systemd cannot carry is refused (ReconError naming the secret and service, never the value)."""
    out = []
    for name, secret in sorted(svc.secrets.items()):
        try:
            value = lookup(name, secret)
        except ReconError as exc:     # not set, unreadable, not UTF-8: say which service needs it
            raise ReconError(f"services.{svc.name}: {exc}") from None
        problem = secret_problem(value, name)
        if problem:
            raise ReconError(f"services.{svc.name}.secrets.{name} (from {secret.source}): {problem}; "
                             "nothing was changed (the value is not shown)")
        out.append(env_file_line(name, value))
    return "".join(out)


def external_units_of(spec: Spec, svc: Service, host: str) -> list[str]:
    """The units of `svc`'s externals that run on `host` (those its unit orders itself after)."""
    out = []
    for name in svc.external_deps:
        ext = spec.externals.get(name)
        if ext is not None and ext.unit and host in ext.hosts:
            out.append(ext.unit)
    return out


def desired_service(svc: Service, host: Host, secret_lookup: Callable[[str, Any], str] | None,
                    tree_lookup: Callable[[Service], str] | None = None,
                    external_units: Sequence[str] = ()) -> DesiredService:
    """`tree_lookup(svc)` gives an archive service's tree digest (it reads the archive: `pipeline` passes
    `archive_digest`); without it the archive's own sha256 stands in. `external_units`: the units of the
    service's externals on this host (`external_units_of`)."""
    values = template_values(svc, host)
    binary = f"{svc.release_dir}/{svc.entrypoint}" if svc.entrypoint else f"{svc.release_dir}/{svc.name}"
    env_path = f"{svc.config_dir}/{svc.name}.env"
    config = expand_tree(svc.config, values)
    secrets_text = render_secrets(svc, secret_lookup) if (svc.secrets and secret_lookup) else ""
    return DesiredService(
        host=host.name,
        service=svc.name,
        version=svc.version,
        sha256=tree_lookup(svc) if svc.entrypoint and tree_lookup else svc.sha256,
        entrypoint=svc.entrypoint,
        archive_sha256=svc.sha256 if svc.entrypoint else None,
        unit_name=svc.unit_name,
        unit_path=f"{UNIT_DIR}/{svc.unit_name}",
        unit_text=render_unit(svc, values, binary, env_path, external_units),
        config_path=svc.config_path,
        config_text=render_config(config),
        env_path=env_path,
        service_dir=svc.service_dir,
        release_dir=svc.release_dir,
        binary_path=binary,
        data_dir=svc.data_dir,
        user=svc.user,
        group=svc.group,
        depends_on=svc.depends_on,
        health_url=expand(svc.health_url, values) if svc.health_url else None,
        metrics_url=expand(svc.metrics_url, values) if svc.metrics_url else None,
        run=svc.run,
        logs=svc.logs,
        log_file=svc.log_file,
        health_timeout_s=svc.health_timeout_s,
        health_interval_s=svc.health_interval_s,
        health_status=svc.health_status,
        reload_signal=svc.reload_signal,
        keep_releases=svc.keep_releases,
        config=config,
        secret_names=tuple(sorted(svc.secrets)),
        secrets_text=secrets_text,
        ignore_drift=svc.ignore_drift,
        health_expect_json=svc.health_expect_json,
    )


def desired_state(spec: Spec, secret_lookup: Callable[[str, Any], str] | None = None,
                  tree_lookup: Callable[[Service], str] | None = None) -> dict[str, dict[str, DesiredService]]:
    """host → service → DesiredService for every service placed on every host."""
    out: dict[str, dict[str, DesiredService]] = {h: {} for h in spec.hosts}
    for svc in spec.services.values():
        for h in svc.hosts:
            out[h][svc.name] = desired_service(svc, spec.hosts[h], secret_lookup, tree_lookup,
                                               external_units_of(spec, svc, h))
    return out


# --- what makes up a release -----------------------------------------------------------------------------
def release_entries(d: DesiredService, artifact: bytes) -> list[Entry]:
    """The files of `d`'s release that come from its artifact (`artifact`: its checked bytes), as paths under
    the release directory: the one executable `{service}` (0755), or an archive's checked members
    (`archive.read_tree`). recon's config and unit are staged beside them."""
    from reconciler.archive import Entry, Kind, read_tree

    if d.entrypoint:
        return read_tree(artifact, d.service, d.entrypoint)
    return [Entry(d.service, Kind.FILE, 0o755, sha256_text(artifact), artifact)]


def archive_digest(svc: Service) -> str:
    """An archive service's tree digest, from its archive (read or downloaded once, checked, cached)."""
    from reconciler.archive import ArchiveError, load_tree, tree_digest

    try:
        entries = load_tree(svc.artifact_path, svc.artifact_url, svc.sha256, svc.name, svc.entrypoint or "")
    except ArchiveError as exc:
        raise ReconError(f"services.{svc.name}.artifact: the archive {svc.artifact_url or svc.artifact_path} is "
                         f"refused: {exc}; nothing was changed") from None
    return tree_digest(entries)
# ------------------------------------------------------------------------------------------ log rotation
LOG_FILE_ENV = "PROVISIONING_LOG_FILE"       # where the service writes its log file (`logs.dir`)
LOGROTATE_PATH = "/etc/logrotate.d/provisioning"
LOGROTATE_HEADER = ("# Managed by recon, rendered from the spec's `logs:`. Edits made here are reported as drift "
                    "and undone by `recon apply`.\n")


def logrotate_text(svcs: Mapping[str, DesiredService]) -> str | None:
    """The logrotate file of one host: one stanza per distinct (directory, period, keep, compress), listing
    each service's `{dir}/{service}.log` by name (never a glob: only recon's files), rotated as the service
    account (`su`), recreated with its owner, and a postrotate that reloads only the services of the stanza
    that have a reload signal (`systemctl reload` fails for a unit without ExecReload=) and are running
    (`try-reload-or-restart` of a reloadable unit reloads it, and does nothing to one that is stopped).
    None when no service on the host has `logs`."""
    stanzas: dict[tuple[str, str, int, bool, str, str], list[DesiredService]] = {}
    for d in sorted(svcs.values(), key=lambda x: x.service):
        if d.logs is None or d.log_file is None:
            continue
        p = d.logs
        stanzas.setdefault((p.dir, p.period, p.keep, p.compress, d.user, d.group), []).append(d)
    if not stanzas:
        return None
    out = [LOGROTATE_HEADER]
    for (_dir, period, keep, compress, user, group), ds in sorted(stanzas.items()):
        out.append("\n" + " ".join(_logrotate_word(d.log_file or "") for d in ds) + " {\n")
        body = [period, f"rotate {keep}", "missingok", "notifempty", f"su {user} {group}",
                f"create 0640 {user} {group}"]
        if compress:
            body += ["compress", "delaycompress"]
        reload = [d.unit_name for d in ds if d.reload_signal]
        if reload:
            body += ["sharedscripts", "postrotate",
                     f"    systemctl try-reload-or-restart {' '.join(reload)} >/dev/null 2>&1 || true", "endscript"]
        out += [f"    {line}\n" for line in body]
        out.append("}\n")
    return "".join(out)


def _logrotate_word(path: str) -> str:
    """A path in a logrotate file: double-quoted when it holds anything but plain path characters."""
    return path if _BARE.fullmatch(path) else '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


_UNIT_EOL = re.compile(r"\r\n|[\n\r\0]")   # what ends a line for systemd's read_line (not U+2028 & co.)


def parse_unit(text: str) -> dict[str, list[str]]:
    """`Key` → values (in order) of a unit file, sections folded; comments and blanks dropped. Lines are
    split and joined the way systemd 252 does (\\n, \\r\\n, \\r and NUL end a line; a line ending in an
    unescaped backslash continues on the next, the backslash read as a space; comment lines inside a
    continuation are skipped), so one line systemd reads is one line here."""
    out: dict[str, list[str]] = {}
    pending: str | None = None
    for raw in [*_UNIT_EOL.split(text), ""]:
        line = raw.strip(" \t")
        if line[:1] in ("#", ";"):
            continue                      # a comment, also inside a continuation (and never continued)
        if _continues(line):
            pending = (pending or "") + line[:-1] + " "
            continue
        if pending is not None:
            line, pending = (pending + line).strip(" \t"), None
        if not line or line.startswith("["):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(" \t"), []).append(value.strip(" \t"))
    return out


def _continues(line: str) -> bool:
    """A line ending in an unescaped backslash continues on the next one."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1
