"""Observe hosts: one batched read-only shell command per host reports everything recon needs about
that host's services (releases, files, systemd properties, health); its output is parsed here.

The script is built and parsed by pure functions; `observe_hosts` is the only I/O and runs the
command on every host at once through `reconciler.transport`.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SHOW_PROPS = (
    "Id", "LoadState", "ActiveState", "SubState", "Result", "MainPID", "NRestarts", "UnitFileState",
    "MemoryMax", "MemoryHigh", "MemoryCurrent", "CPUQuotaPerSecUSec", "TasksMax", "LimitNOFILE",
    "NeedDaemonReload", "ExecMainStartTimestampMonotonic", "ActiveEnterTimestamp", "FragmentPath",
    "DropInPaths",
)
PROTOCOL = "recon-observe/1"


@dataclass(frozen=True)
class Target:
    """What to look at for one service on one host (from the spec, or from state for removed ones)."""

    service: str
    service_dir: str
    config_path: str
    unit_name: str
    env_path: str
    want_version: str | None = None
    health_url: str | None = None
    user: str | None = None               # the service account (reported back in ObservedHost.users)


@dataclass
class Health:
    code: int | None
    body: str = ""

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    def summary(self) -> str:
        return "no answer" if self.code is None else f"HTTP {self.code}"


@dataclass
class ObservedService:
    name: str
    current: str | None = None            # version `current` points at
    releases: list[str] = field(default_factory=list)
    binary_sha: str | None = None          # sha256 of current release's binary
    want_binary_sha: str | None = None     # sha256 of the desired version's binary, if already there
    config_text: str | None = None
    config_link: str | None = None
    unit_text: str | None = None
    env_hash: str | None = None
    props: dict[str, str] = field(default_factory=dict)
    cmdline: str | None = None
    health: Health | None = None

    @property
    def exists(self) -> bool:
        return bool(self.current or self.unit_text or self.releases)

    @property
    def active(self) -> str:
        return self.props.get("ActiveState", "unknown")

    @property
    def main_pid(self) -> int:
        try:
            return int(self.props.get("MainPID", "0"))
        except ValueError:
            return 0

    @property
    def running_version(self) -> str | None:
        """The release the running process was started from (from its command line)."""
        if not self.cmdline or self.main_pid == 0:
            return None
        for part in self.cmdline.split():
            if "/releases/" in part:
                return part.split("/releases/", 1)[1].split("/", 1)[0]
        return None

    def fingerprint(self) -> dict[str, Any]:
        """What a saved plan pins: the observed facts the plan was made from."""
        return {
            "current": self.current, "releases": sorted(self.releases), "binary_sha": self.binary_sha,
            "config": self.config_text, "unit": self.unit_text, "env_hash": self.env_hash,
            "active": self.props.get("ActiveState"), "memory_max": self.props.get("MemoryMax"),
            "running": self.running_version, "drop_ins": self.props.get("DropInPaths"),
        }


@dataclass
class ObservedHost:
    name: str
    services: dict[str, ObservedService] = field(default_factory=dict)
    unit_files: list[str] = field(default_factory=list)   # provisioning-*.service found on the host
    users: set[str] = field(default_factory=set)
    error: str | None = None
    commands: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


_PRELUDE = r"""set +e
LC_ALL=C; export LC_ALL
b64() { base64 -w0 2>/dev/null || base64 | tr -d '\n'; }
emit() { _l="$1	$2	$(printf '%s' "$3" | b64)"; printf '%s\n' "$_l"; }
emitf() { [ -f "$3" ] || return 0; printf '%s\t%s\t' "$1" "$2"; b64 < "$3"; printf '\n'; }
sha() { [ -f "$1" ] && sha256sum < "$1" | cut -c1-64; }
obs() {
  n=$1; d=$2; c=$3; u=$4; e=$5; v=$6
  cur=$(readlink "$d/current" 2>/dev/null); cur=${cur%/}
  [ -n "$cur" ] && emit current "$n" "${cur##*/}"
  [ -d "$d/releases" ] && emit releases "$n" "$(ls -1 "$d/releases" 2>/dev/null)"
  [ -n "$cur" ] && emit bin_sha "$n" "$(sha "$d/releases/${cur##*/}/$n")"
  [ -n "$v" ] && [ -f "$d/releases/$v/$n" ] && emit want_sha "$n" "$(sha "$d/releases/$v/$n")"
  emitf config "$n" "$c"
  [ -L "$c" ] && emit config_link "$n" "$(readlink "$c")"
  emitf unit "$n" "/etc/systemd/system/$u"
  [ -f "$e" ] && emit env_hash "$n" "$({ printf '%s\000' "$RECON_SALT"; cat "$e"; } | sha256sum | cut -c1-64)"
}
health() {
  n=$1; url=$2
  systemctl is-active -q "$3" 2>/dev/null || return 0
  command -v curl >/dev/null 2>&1 || return 0
  out=$(curl -s -m 3 -w '\n%{http_code}' "$url" 2>/dev/null | tail -c 1024)
  emit health "$n" "$out"
}
"""


def build_script(targets: Iterable[Target], salt: str) -> str:
    """The one read-only command that observes every target service on a host."""
    targets = list(targets)
    q = shlex.quote
    lines = [_PRELUDE, f"RECON_SALT={q(salt)}", f"emit protocol - {q(PROTOCOL)}"]
    for t in targets:
        lines.append("obs " + " ".join(q(x) for x in (t.service, t.service_dir, t.config_path, t.unit_name,
                                                        t.env_path, t.want_version or "")))
    units = " ".join(q(t.unit_name) for t in targets)
    props = ",".join(SHOW_PROPS)
    if targets:
        lines.append(f'emit show - "$(systemctl show --no-pager -p {props} {units} 2>&1)"')
    lines.append('emit unit_files - "$(cd /etc/systemd/system 2>/dev/null && ls -1d provisioning-*.service '
                 '2>/dev/null)"')
    users = sorted({t.user for t in targets if t.user} | {"provisioning"})
    lines.append('emit users - "$(getent passwd ' + " ".join(q(u) for u in users) + ' | cut -d: -f1)"')
    lines.append(_cmdlines(targets))
    health_lines = [f"health {q(t.service)} {q(t.health_url)} {q(t.unit_name)} &" for t in targets if t.health_url]
    lines += health_lines
    lines.append("wait")
    lines.append("emit end - ok")
    return "\n".join(x for x in lines if x) + "\n"


def _cmdlines(targets: list[Target]) -> str:
    """MainPIDs come from the same `systemctl show` output, read back in the shell."""
    if not targets:
        return ""
    q = shlex.quote
    units = " ".join(q(t.unit_name) for t in targets)
    return (
        "emitpid() { [ -n \"$id\" ] && [ -n \"$pid\" ] && [ \"$pid\" != 0 ] && [ -r \"/proc/$pid/cmdline\" ] && "
        "emit cmdline \"$id\" \"$(tr '\\000' ' ' < /proc/$pid/cmdline)\"; id=; pid=; }\n"
        f"systemctl show --no-pager -p Id,MainPID {units} 2>/dev/null | "
        "{ id=; pid=; while IFS='=' read -r k val; do case \"$k\" in Id) id=$val;; MainPID) pid=$val;; "
        "'') emitpid;; esac; done; emitpid; }"
    )


def _parse_show(text: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for block in text.split("\n\n"):
        props: dict[str, str] = {}
        for line in block.splitlines():
            k, sep, v = line.partition("=")
            if sep:
                props[k] = v
        if "Id" in props:
            out[props["Id"]] = props
    return out


class ObserveError(Exception):
    pass


def parse_output(host: str, text: str, targets: Iterable[Target]) -> ObservedHost:
    """Parse the batched command's output; ObserveError on anything that is not the protocol."""
    by_name = {t.service: t for t in targets}
    by_unit = {t.unit_name: t.service for t in by_name.values()}
    obs = ObservedHost(host, {n: ObservedService(n) for n in by_name})
    seen_protocol = seen_end = False
    show: dict[str, dict[str, str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if (not seen_protocol and (len(parts) != 3 or parts[0] != "protocol")) or seen_end:
            continue   # a login banner or shell start-up/logout noise around recon's answer
        if len(parts) != 3:
            raise ObserveError(f"line {lineno} of the host's answer is not recon's protocol: {line[:80]!r}")
        key, name, payload = parts
        try:
            value = base64.b64decode(payload, validate=True).decode("utf-8", "replace")
        except (ValueError, base64.binascii.Error) as exc:  # type: ignore[attr-defined]
            raise ObserveError(f"line {lineno}: bad encoding ({exc})") from None
        if key == "protocol":
            if value != PROTOCOL:
                raise ObserveError(f"unexpected protocol {value!r}")
            seen_protocol = True
            continue
        if key == "end":
            seen_end = True
            continue
        if key == "show":
            show = _parse_show(value)
            continue
        if key == "unit_files":
            obs.unit_files = [x for x in value.splitlines() if x.strip()]
            continue
        if key == "users":
            obs.users = {x for x in value.splitlines() if x.strip()}
            continue
        if key == "cmdline":
            name = by_unit.get(name, name)
        svc = obs.services.get(name)
        if svc is None:
            continue
        if key == "current":
            svc.current = value or None
        elif key == "releases":
            svc.releases = sorted(x for x in value.splitlines() if x.strip())
        elif key == "bin_sha":
            svc.binary_sha = value or None
        elif key == "want_sha":
            svc.want_binary_sha = value or None
        elif key == "config":
            svc.config_text = value
        elif key == "config_link":
            svc.config_link = value
        elif key == "unit":
            svc.unit_text = value
        elif key == "env_hash":
            svc.env_hash = value
        elif key == "cmdline":
            svc.cmdline = value.strip()
        elif key == "health":
            body, _, code = value.rpartition("\n")
            svc.health = Health(int(code) if code.isdigit() and code != "000" else None, body)
    if not seen_protocol or not seen_end:
        raise ObserveError("the host's answer was cut short or is not recon's protocol")
    for unit, props in show.items():
        name = by_unit.get(unit)
        if name in obs.services:
            obs.services[name].props = props
    return obs


def observe_hosts(session: Any, targets: Mapping[str, list[Target]], salt: str) -> dict[str, ObservedHost]:
    """Observe every connected host in one round trip each, in parallel."""
    scripts = {h: build_script(ts, salt) for h, ts in targets.items() if h in session.connected}
    results = session.run_many(scripts, timeout=60)
    out: dict[str, ObservedHost] = {}
    for host, ts in targets.items():
        if host in session.errors:
            out[host] = ObservedHost(host, error=session.errors[host])
            continue
        res = results.get(host)
        if res is None:
            out[host] = ObservedHost(host, error=f"host {host!r} was not reached")
            continue
        if not res.ok:
            detail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            out[host] = ObservedHost(host, error=f"observing host {host!r} failed: {' '.join(detail) or 'no output'}")
            continue
        try:
            out[host] = parse_output(host, res.stdout, ts)
        except ObserveError as exc:
            out[host] = ObservedHost(host, error=f"host {host!r} answered garbage: {exc}")
        out[host].commands = session.commands.get(host, 0)
    return out
