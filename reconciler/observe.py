"""Observe hosts: one batched read-only shell command per host reports everything recon needs about
that host's services (releases, files, systemd properties, health); its output is parsed here.

The script is built and parsed by pure functions; `observe_hosts` is the only I/O and runs the
command on every host at once through `reconciler.transport`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler import healthjson
from reconciler.archive import TREESUM_FN

SHOW_PROPS = (
    "Id", "LoadState", "ActiveState", "SubState", "Result", "MainPID", "NRestarts", "UnitFileState",
    "MemoryMax", "MemoryHigh", "MemoryCurrent", "CPUQuotaPerSecUSec", "TasksMax", "LimitNOFILE",
    "NeedDaemonReload", "ExecMainStartTimestampMonotonic", "ActiveEnterTimestamp", "FragmentPath",
    "DropInPaths",
)
PROTOCOL = "recon-observe/3"
HOST_FILES = ("/etc/logrotate.d/provisioning",)   # host-wide files recon may write (`logs:`), read every time


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
    group: str | None = None              # its group (reported back in ObservedHost.groups)
    dirs: tuple[str, ...] = ()            # directories whose existence is reported (ObservedHost.dirs)
    tree: bool = False                    # an archive release: observed as its tree digest (archive.TREESUM_FN)
    health_expect: tuple[tuple[str, Any], ...] = ()   # `health.expect_json`: the body is read and checked


@dataclass
class Health:
    code: int | None
    problem: str | None = None     # a 2xx answer without the `health.expect_json` fields: which, expected, found

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300 and self.problem is None

    def summary(self) -> str:
        return "no answer" if self.code is None else f"HTTP {self.code}" + (f", {self.problem}" if self.problem else "")


@dataclass
class ObservedService:
    name: str
    current: str | None = None            # version `current` points at
    releases: list[str] = field(default_factory=list)
    binary_sha: str | None = None          # sha256 of current release's binary
    want_binary_sha: str | None = None     # sha256 of the desired version's binary, if already there
    config_text: str | None = None
    unit_text: str | None = None
    env_hash: str | None = None
    props: dict[str, str] = field(default_factory=dict)
    cmdline: str | None = None
    health: Health | None = None
    service_dir: str | None = None         # where its releases are (anchors running_version)
    # drop-ins in /etc/systemd/system/UNIT.d/ and /run/systemd/system/UNIT.d/: path -> text
    dropins: dict[str, str] = field(default_factory=dict)

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
        anchor = f"{self.service_dir.rstrip('/')}/releases/" if self.service_dir else "/releases/"
        for part in self.cmdline.split():
            if anchor in part:
                return part.rsplit(anchor, 1)[1].split("/", 1)[0]
        return None

    def fingerprint(self) -> dict[str, Any]:
        """What a saved plan pins: the observed facts the plan was made from."""
        return {
            "current": self.current, "releases": sorted(self.releases), "binary_sha": self.binary_sha,
            "config": self.config_text, "unit": self.unit_text, "env_hash": self.env_hash,
            "active": self.props.get("ActiveState"), "memory_max": self.props.get("MemoryMax"),
            "running": self.running_version, "drop_ins": self.props.get("DropInPaths"),
            "dropins": dict(sorted(self.dropins.items())),
        }


@dataclass
class ObservedHost:
    name: str
    services: dict[str, ObservedService] = field(default_factory=dict)
    unit_files: list[str] = field(default_factory=list)   # provisioning-*.service found on the host
    users: set[str] = field(default_factory=set)
    accounts: dict[str, str] = field(default_factory=dict)   # name -> `getent passwd` line
    groups: dict[str, str] = field(default_factory=dict)     # name -> `getent group` line
    dirs: dict[str, str] = field(default_factory=dict)       # path -> "dir" | "other" (absent: missing)
    host_files: dict[str, str] = field(default_factory=dict)  # host-wide files recon writes (HOST_FILES) -> text
    error: str | None = None
    commands: int = 0
    external: str = ""      # what `external.probe_script` printed (`external:` entries seen from this host)

    @property
    def ok(self) -> bool:
        return self.error is None


_PRELUDE = r"""set +e
LC_ALL=C; export LC_ALL
NL='
'
meta=; bins=; files=; pids=; urls=; jurls=; curl=
command -v curl >/dev/null 2>&1 && curl=1
rec() { meta="$meta$1	$2	$3$NL"; }
block() { printf '%s\t-\t' "$1"; base64 -w0; printf '\n'; }
part() { printf '\n%s %s\n' "$MARK" "$1"; }
obs() {
  n=$1; d=$2; c=$3; u=$4; e=$5; v=$6; cur=
  if cd -P "$d/current" 2>/dev/null; then cur=${PWD##*/}; cd /
  elif [ -L "$d/current" ]; then cur=$(readlink "$d/current"); cur=${cur%/}; cur=${cur##*/}
  fi
  [ -n "$cur" ] && rec current "$n" "$cur"
  for r in "$d"/releases/*/; do [ -d "$r" ] && r=${r%/} && rec release "$n" "${r##*/}"; done
  [ -n "$cur" ] && readable "$n" "$d/releases/$cur/$n" && bins="$bins$d/releases/$cur/$n$NL"
  [ -n "$v" ] && [ "$v" != "$cur" ] && readable "$n" "$d/releases/$v/$n" && bins="$bins$d/releases/$v/$n$NL"
  readable "$n" "$c" && files="$files$c$NL"
  readable "$n" "/etc/systemd/system/$u" && files="$files/etc/systemd/system/$u$NL"
  for f in "/etc/systemd/system/$u.d/"*.conf "/run/systemd/system/$u.d/"*.conf; do
    case $f in *"$NL"*) rec odd_dropin "$n" -; continue;; esac
    readable "$n" "$f" && rec dropin "$n" "$f" && files="$files$f$NL"
  done
  readable "$n" "$e" && rec env_hash "$n" "$({ printf '%s\000' "$RECON_SALT"; cat "$e"; } | sha256sum)"
}
readable() { [ -f "$2" ] || return 1; [ -r "$2" ] && return 0; rec unreadable "$1" "$2"; return 1; }
unit() {
  [ -n "$id" ] || return 0
  [ -n "$pid" ] && [ "$pid" != 0 ] && [ -r "/proc/$pid/cmdline" ] && pids="$pids/proc/$pid/cmdline$NL"
  case $st$curl in
    active1|reloading1) url=; js=; urlof "$id"
      if [ -n "$js" ]; then jurls="$jurls$url$NL"; rec jcheck "$id" -
      elif [ -n "$url" ]; then urls="$urls$url$NL"; rec check "$id" -; fi;;
  esac
  id=; pid=; st=
}
"""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def build_script(targets: Iterable[Target], salt: str, extra: str = "", mark: str | None = None) -> str:
    """The one read-only command that observes every target service on a host.

    Few processes on the host, whatever the number of services: shell builtins gather names and
    links, and one `sha256sum`, `stat`, `cat`, `systemctl show`, `grep` (command lines), `curl`
    (every health check, in parallel; no proxy, no URL globbing; results matched by position) and
    `getent` each cover all services. Health is checked only for active units, and only where curl
    is installed. Drop-ins of each unit (`/etc` and `/run/systemd/system/UNIT.d/*.conf`) are found
    with globs and read with the other files. Each block is one base64 line `key<TAB>-<TAB>payload`,
    parsed by `parse_output`; the parts gathered at the end go out as one `pack` block (one `base64`),
    cut apart at `mark` (random unless given: no file on the host can know it). `extra` (read-only shell,
    e.g. `external.probe_script`) runs last, its output the `external` block (`ObservedHost.external`).
    """
    targets = list(targets)
    q = shlex.quote
    mark = mark or secrets.token_hex(16)
    lines = [_PRELUDE, f"RECON_SALT={q(salt)}", f"MARK={q(mark)}", f"printf 'protocol\\t-\\t%s\\n' {_b64(PROTOCOL)}"]
    urls = [f"  {q(t.unit_name)}) url={q(t.health_url)}{'; js=1' if t.health_expect else ''};;"
            for t in targets if t.health_url]
    if any(t.health_url and t.health_expect for t in targets):
        lines.append(f"RECON_HMARK={health_mark(salt)}")
    lines.append("urlof() {\n  case $1 in\n" + "\n".join(urls) + ("\n" if urls else "") + "  esac\n}")
    for t in targets:
        lines.append("obs " + " ".join(q(x) for x in (t.service, t.service_dir, t.config_path, t.unit_name,
                                                        t.env_path, t.want_version or "")))
    trees = [t for t in targets if t.tree]
    if trees:   # archive releases: the tree digest of the current and the wanted release (a few processes each)
        lines += [TREESUM_FN, _TOBS]
        lines += ["tobs " + " ".join(q(x) for x in (t.service, t.service_dir, t.want_version or "")) for t in trees]
    for path in HOST_FILES:    # read with the one `cat` of all files
        lines.append(f"readable - {q(path)} && rec host_file - {q(path)} && files=\"$files\"{q(path)}\"$NL\"")
    lines.append('for f in /etc/systemd/system/provisioning-*.service; do [ -e "$f" ] && rec unit_file - "${f##*/}"; '
                 "done")
    dirs = list(dict.fromkeys(p for t in targets for p in t.dirs))
    if dirs:   # builtins only: no process per directory
        lines.append("for p in " + " ".join(q(p) for p in dirs) + '; do if [ -d "$p" ]; then rec dir d "$p"; '
                     'elif [ -e "$p" ] || [ -L "$p" ]; then rec dir x "$p"; fi; done')
    if targets:
        units = " ".join(q(t.unit_name) for t in targets)
        lines.append(f"show=$(systemctl show --no-pager -p {','.join(SHOW_PROPS)} {units} 2>&1)")
    else:
        lines.append("show=")
    users = sorted({t.user for t in targets if t.user} | {"provisioning"})
    # the groups from /etc/group with the shell's `read` (no process; apply asks NSS with getent)
    groups = sorted({t.group for t in targets if t.group} | {"provisioning"})
    lines.append("[ -r /etc/group ] && while IFS= read -r l; do case $l in " + "|".join(f"{q(g)}:*" for g in groups)
                 + ') rec group - "$l";; esac; done < /etc/group')
    lines.append(_TAIL.replace("@USERS@", " ".join(q(u) for u in users)))
    if extra:
        lines.append("(\n" + extra + "\n) 2>/dev/null | block external")
    lines.append(f"printf 'end\\t-\\t%s\\n' {_b64('ok')}")
    return "\n".join(x for x in lines if x) + "\n"


_TOBS = r"""tobs() {
  n=$1; d=$2; v=$3; cur=
  if cd -P "$d/current" 2>/dev/null; then cur=${PWD##*/}; cd /; fi
  [ -n "$cur" ] && t=$(treesum "$d/releases/$cur" "$n") && [ -n "$t" ] && rec tree "$n" "$cur ${t%% *}"
  [ -n "$v" ] && [ "$v" != "$cur" ] && [ -d "$d/releases/$v" ] && t=$(treesum "$d/releases/$v" "$n") && \
    [ -n "$t" ] && rec tree "$n" "$v ${t%% *}"
}"""

# The rest reads `systemctl show` from a pipe (a here-document would be a temp file under bash < 5.1).
# Its parts go out as one `pack` block: raw, each after a line `MARK KEY` (MARK: a random line the
# script starts the pack with), through one `base64` for them all (one process, not one per part).
_TAIL = r"""printf '%s\n' "$show" | {
id=; pid=; st=
while IFS='=' read -r k val; do
  case $k in Id) id=$val;; MainPID) pid=$val;; ActiveState) st=$val;; '') unit;; esac
done
unit
{
printf '%s\n' "$MARK"
part meta; printf '%s' "$meta"
[ -n "$show" ] && part show && printf '%s' "$show"
IFS=$NL; set -f
[ -n "$bins" ] && part sums && sha256sum $bins 2>/dev/null
if [ -n "$files" ]; then part sizes; stat -L -c '%s %n' $files 2>/dev/null; part files; cat $files 2>/dev/null; fi
[ -n "$pids" ] && part cmdline && grep -a -H '' $pids 2>/dev/null
if [ -n "$urls" ]; then
  set --; for x in $urls; do set -- "$@" -o /dev/null "$x"; done
  out=$(curl -q -g -s --noproxy '*' -m 3 -Z -w '%{urlnum} %{http_code}\n' "$@" 2>/dev/null)
  case $out in [0-9]*) ;; *) out=$(curl -q -g -s --noproxy '*' -m 3 -w '= %{http_code}\n' "$@" 2>/dev/null);; esac
  part health; printf '%s' "$out"
fi
if [ -n "$jurls" ]; then   # health.expect_json: one after another, each body followed by a marker line
  set --; for x in $jurls; do set -- "$@" "$x"; done
  part health_json; printf '%s\n' "$RECON_HMARK"
  curl -q -g -s --noproxy '*' -m 3 -w "\n$RECON_HMARK %{http_code}\n" "$@" 2>/dev/null
fi
part users; getent passwd @USERS@
} | block pack
}"""


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
    obs = ObservedHost(host, {n: ObservedService(n) for n in by_name})
    blocks: dict[str, bytes] = {}
    seen_protocol = seen_end = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if (not seen_protocol and (len(parts) != 3 or parts[0] != "protocol")) or seen_end:
            continue   # a login banner or shell start-up/logout noise around recon's answer
        if len(parts) != 3:
            raise ObserveError(f"line {lineno} of the host's answer is not recon's protocol: {line[:80]!r}")
        key, _, payload = parts
        try:
            value = base64.b64decode(payload, validate=True)
        except (ValueError, base64.binascii.Error) as exc:  # type: ignore[attr-defined]
            raise ObserveError(f"line {lineno}: bad encoding ({exc})") from None
        if key == "protocol":
            if value.decode("utf-8", "replace") != PROTOCOL:
                raise ObserveError(f"unexpected protocol {value[:40]!r}")
            seen_protocol = True
        elif key == "end":
            seen_end = True
        elif key == "pack":
            blocks.update(_unpack(value))
        else:
            blocks[key] = value
    if not seen_protocol or not seen_end:
        raise ObserveError("the host's answer was cut short or is not recon's protocol")

    def text_of(key: str) -> str:
        return blocks.get(key, b"").decode("utf-8", "replace")

    checks: list[str] = []          # units whose health was checked, in the order of the results
    jchecks: list[str] = []         # units whose health body was read (health.expect_json), in order
    host_files: list[str] = []
    dropins: dict[str, list[str]] = {}
    trees: dict[str, dict[str, str]] = {}    # service → release → tree digest (archive releases)
    for line in text_of("meta").splitlines():
        key, _, rest = line.partition("\t")
        name, _, value = rest.partition("\t")
        if key == "unit_file":
            obs.unit_files.append(value)
            continue
        if key == "check":
            checks.append(name)
            continue
        if key == "jcheck":
            jchecks.append(name)
            continue
        if key == "dir":
            obs.dirs[value] = "dir" if name == "d" else "other"
            continue
        if key == "group":
            obs.groups[value.split(":", 1)[0]] = value
            continue
        if key == "host_file":
            host_files.append(value)
            continue
        if key == "unreadable":
            raise ObserveError(f"cannot read {value} ({name}): observe as root, or let the SSH user read it")
        if key == "odd_dropin":
            raise ObserveError(f"a drop-in of {name}'s unit has a newline in its file name; rename or remove it")
        if key == "dropin":
            dropins.setdefault(name, []).append(value)
            continue
        if key == "tree":
            version, _, digest = value.partition(" ")
            trees.setdefault(name, {})[version] = digest
            continue
        svc = obs.services.get(name)
        if svc is None:
            continue
        if key == "current":
            svc.current = value or None
        elif key == "release":
            svc.releases.append(value)
        elif key == "env_hash":
            svc.env_hash = value[:64]
    sums = _sha256sum_lines(text_of("sums"))
    contents = _split_files(text_of("sizes"), blocks.get("files", b""))
    show = _parse_show(text_of("show"))
    cmdlines = _cmdlines(blocks.get("cmdline", b""))
    health = _health_results(text_of("health"), checks)
    bodies = health_bodies(text_of("health_json"), jchecks)
    for name, t in by_name.items():
        svc = obs.services[name]
        svc.releases.sort()
        if svc.current:
            svc.binary_sha = sums.get(f"{t.service_dir}/releases/{svc.current}/{name}")
        if t.want_version:
            svc.want_binary_sha = sums.get(f"{t.service_dir}/releases/{t.want_version}/{name}")
        if t.tree:   # an archive release is its tree digest, never the sha256 of one file
            svc.binary_sha = trees.get(name, {}).get(svc.current or "")
            svc.want_binary_sha = trees.get(name, {}).get(t.want_version or "")
        svc.config_text = contents.get(t.config_path)
        svc.unit_text = contents.get(f"/etc/systemd/system/{t.unit_name}")
        svc.props = show.get(t.unit_name, {})
        svc.cmdline = cmdlines.get(svc.props.get("MainPID", ""))
        svc.service_dir = t.service_dir
        svc.dropins = {p: contents[p] for p in dropins.get(name, []) if p in contents}
        if t.unit_name in checks:
            code = health.get(t.unit_name, "000")
            svc.health = Health(int(code) if code.isdigit() and code != "000" else None)
        elif t.unit_name in bodies:
            svc.health = _checked_health(*bodies[t.unit_name], t.health_expect)
    obs.external = text_of("external")
    obs.host_files = {p: contents[p] for p in host_files if p in contents}
    obs.accounts = {x.split(":", 1)[0]: x for x in text_of("users").splitlines() if x.strip()}
    obs.users = set(obs.accounts)
    return obs


def health_mark(salt: str) -> str:
    """The line that ends each health body in the observation's answer (from the salt, which it does not show)."""
    return "RECON-HEALTH-" + hashlib.sha256(f"health-mark\0{salt}".encode()).hexdigest()[:20]


def health_bodies(text: str, checks: list[str]) -> dict[str, tuple[str, str]]:
    """unit → (HTTP code, body) from the `health_json` block: the MARK line, then curl's bodies, each followed
    by a line `MARK CODE`, in the order of `checks`."""
    out: dict[str, tuple[str, str]] = {}
    mark, _, text = text.partition("\n")
    if not checks or not mark.startswith("RECON-HEALTH-"):
        return out
    pattern = re.compile(r"(.*?)\n" + re.escape(mark) + r" ([0-9]{3})\n", re.S)
    pos = 0
    for unit in checks:
        m = pattern.match(text, pos)
        if m is None:
            break
        out[unit] = (m[2], m[1])
        pos = m.end()
    return out


def _checked_health(code: str, body: str, expect: tuple[tuple[str, Any], ...]) -> Health:
    if not code.isdigit() or code == "000":
        return Health(None)
    status = int(code)
    return Health(status, healthjson.mismatch(dict(expect), body) if 200 <= status < 300 else None)


def _unpack(data: bytes) -> dict[str, bytes]:
    """The `pack` block: a first line MARK, then each part as `\\nMARK KEY\\n` and its raw bytes."""
    mark, sep, rest = data.partition(b"\n")
    if not sep or not re.fullmatch(rb"[0-9a-f]{16,64}", mark):
        raise ObserveError("the host's answer has a pack without its mark")
    out: dict[str, bytes] = {}
    for piece in rest.split(b"\n" + mark + b" ")[1:]:
        key, _, content = piece.partition(b"\n")
        out[key.decode("ascii", "replace")] = content
    return out


def _health_results(text: str, checks: list[str]) -> dict[str, str]:
    """curl's write-out, unit -> HTTP code: `URLNUM CODE` lines (parallel, in any order), or `= CODE`
    lines in the order of the URLs (curl older than 7.75, one after another)."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        num, _, code = line.partition(" ")
        index = i if num == "=" else int(num) if num.isdigit() else -1
        if 0 <= index < len(checks):
            out[checks[index]] = code.strip()
    return out


def _sha256sum_lines(text: str) -> dict[str, str]:
    """`sha256sum` output: HEX, two spaces (or space and `*`), path; a path with a backslash or a
    newline is escaped and its line starts with a backslash."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        if len(line) > 66:
            path = line[66:]
            if escaped:
                path = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], path)
            out[path] = line[:64]
    return out


def _split_files(sizes: str, data: bytes) -> dict[str, str]:
    """`stat -c '%s %n'` of the files, then `cat` of the same files: cut the bytes by size."""
    out: dict[str, str] = {}
    pos = 0
    for line in sizes.splitlines():
        size, _, path = line.partition(" ")
        if not size.isdigit():
            raise ObserveError(f"bad file size line {line[:80]!r}")
        out[path] = data[pos:pos + int(size)].decode("utf-8", "replace")
        pos += int(size)
    if pos != len(data):
        raise ObserveError("a file changed while it was read (sizes and contents disagree); run again")
    return out


def _cmdlines(data: bytes) -> dict[str, str]:
    """`grep -a -H '' /proc/PID/cmdline...`: MainPID -> command line (arguments joined by spaces)."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        head, sep, rest = line.partition("/cmdline:")
        if sep and head.startswith("/proc/"):
            pid = head[len("/proc/"):]
            joined = rest.replace("\0", " ").strip()
            out[pid] = f"{out[pid]} {joined}" if pid in out else joined
    return out


def observe_hosts(session: Any, targets: Mapping[str, list[Target]], salt: str,
                  extra: Mapping[str, str] | None = None) -> dict[str, ObservedHost]:
    """Observe every connected host in one round trip each, in parallel (`extra`: more read-only shell per host,
    in the same round trip)."""
    scripts = {h: build_script(ts, salt, (extra or {}).get(h, "")) for h, ts in targets.items()
               if h in session.connected}
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
