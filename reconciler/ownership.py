"""Ownership: recon changes only what it created and recorded.

Pure rules and the host-side scripts that enforce them (see docs/design.md, "Ownership"):
- paths recon writes to or deletes are absolute, normalised, not a system directory nor a parent of one
  (`path_problem`, checked when validating and again before a delete);
- accounts: a missing one is created as a system user; an existing one is used as it is, never
  modified; uid 0 and login accounts are refused (`account_problem`);
- directories: a missing one is created with its owner and mode and recorded; an existing one recon did
  not create keeps its owner and mode (`ensure_script`);
- a delete removes only what recon recorded as created for that service, after resolving the path on
  the host, and never follows a symbolic link out of it (`delete_script`, `prune_script`).
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.desired import DesiredService
    from reconciler.state import ServiceRecord

# Directories of the operating system: recon never creates-and-owns, re-owns or deletes one of these,
# nor uses one of them (or a parent of one: `/`, `/usr`, `/var` …) as a directory of its own.
SYSTEM_PATHS: frozenset[str] = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lost+found", "/media", "/mnt", "/opt", "/proc",
    "/root", "/run", "/sbin", "/snap", "/srv", "/sys", "/tmp", "/usr", "/var",
    "/etc/apt", "/etc/cron.d", "/etc/default", "/etc/init.d", "/etc/network", "/etc/pam.d", "/etc/profile.d",
    "/etc/security", "/etc/ssh", "/etc/ssl", "/etc/sudoers.d", "/etc/systemd", "/etc/systemd/system",
    "/usr/bin", "/usr/games", "/usr/include", "/usr/lib", "/usr/libexec", "/usr/local", "/usr/sbin",
    "/usr/share", "/usr/src", "/usr/lib/systemd", "/usr/local/bin", "/usr/local/etc", "/usr/local/games",
    "/usr/local/include", "/usr/local/lib", "/usr/local/sbin", "/usr/local/share", "/usr/local/src",
    "/var/backups", "/var/cache", "/var/lib", "/var/local", "/var/lock", "/var/log", "/var/mail", "/var/opt",
    "/var/run", "/var/spool", "/var/tmp", "/var/lib/apt", "/var/lib/dpkg", "/var/lib/systemd",
    "/var/log/journal", "/run/systemd",
})
# Kernel filesystems: nothing under them is ever recon's.
KERNEL_TREES = ("/dev", "/proc", "/sys")
_LIB = re.compile(r"^(/usr)?/lib[^/]*$")          # /lib, /lib64, /libx32, /usr/lib32 …
SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false")
SYSTEM_UID_MAX = 999                             # login.defs SYS_UID_MAX on Debian and RHEL
SYSTEM_USER_SHELL = "/usr/sbin/nologin"
SYSTEM_USER_HOME = "/nonexistent"
# What recon puts in a service directory; a delete removes the directory only when nothing else is in it.
SERVICE_LAYOUT = ("current", ".current.tmp", "releases")


def is_system_path(path: str) -> bool:
    return path in SYSTEM_PATHS or bool(_LIB.match(path))


def path_problem(path: str) -> str | None:
    """Why `path` cannot be a directory recon writes to or deletes, or None when it can."""
    if not path.startswith("/"):
        return "not an absolute path"
    parts = path.split("/")[1:]
    if path != "/" and any(p in ("", ".", "..") for p in parts):
        return "not a normalised path (no `.` or `..` parts, no `//`, no trailing `/`)"
    if is_system_path(path):
        return f"{path} is a system directory"
    for tree in KERNEL_TREES:
        if path.startswith(tree + "/"):
            return f"{path} is inside {tree}, a kernel filesystem"
    inside = sorted(s for s in SYSTEM_PATHS if s.startswith(path + "/"))
    if inside:
        return f"{path} contains the system directory {inside[0]}"
    return None


def overlaps(a: str, b: str) -> bool:
    """`a` and `b` are the same directory or one is inside the other."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


# --------------------------------------------------------------------------------------------- accounts
@dataclass(frozen=True)
class Account:
    """One `getent passwd` line."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @classmethod
    def parse(cls, line: str) -> Account | None:
        parts = line.rstrip("\n").split(":")
        if len(parts) < 7 or not parts[2].isdigit() or not parts[3].isdigit():
            return None
        return cls(parts[0], int(parts[2]), int(parts[3]), parts[5], parts[6])


def account_problem(acct: Account) -> str | None:
    """Why recon refuses to run a service as this existing account, or None."""
    if acct.uid == 0:
        return f"account {acct.name} has uid 0 (root)"
    if acct.uid > SYSTEM_UID_MAX:
        return f"account {acct.name} (uid {acct.uid}) is not a system account (uid above {SYSTEM_UID_MAX})"
    if (acct.shell or "/bin/sh") not in NOLOGIN_SHELLS:
        return f"account {acct.name} is a login account (shell {acct.shell or '/bin/sh'})"
    return None


def group_problem(line: str) -> str | None:
    parts = line.rstrip("\n").split(":")
    if len(parts) >= 3 and parts[2] == "0":
        return f"group {parts[0]} has gid 0 (root)"
    return None


# --------------------------------------------------------------------------------------------- directories
@dataclass(frozen=True)
class DirSpec:
    """A directory a service needs. role: `service` (its release tree: deleted with it), `data` (kept),
    `shared` (install/config dirs and missing parents: removed when empty and no service uses them),
    `system` (an OS directory: created when missing, never recorded, never removed)."""

    path: str
    owner: str
    group: str
    mode: str
    role: str


def _chain(path: str) -> list[str]:
    """`/a/b/c` → [`/a`, `/a/b`, `/a/b/c`]."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)] if path.strip("/") else []


def dirs_of(d: DesiredService) -> list[DirSpec]:
    """The directories a service needs on its host, parents first (each path once)."""
    install_dir = posixpath.dirname(d.service_dir)
    config_dir = posixpath.dirname(d.config_path)
    out: dict[str, DirSpec] = {}

    def add(path: str, role: str, owner: str = "root", group: str = "root", mode: str = "755") -> None:
        for parent in _chain(path)[:-1]:
            if parent not in out:
                out[parent] = DirSpec(parent, "root", "root", "755", "system" if is_system_path(parent) else "shared")
        if path not in out:
            out[path] = DirSpec(path, owner, group, mode, role)

    add(install_dir, "shared")
    add(d.service_dir, "service")
    add(d.service_dir + "/releases", "service")
    add(config_dir, "shared")
    add(d.data_dir, "data", d.user, d.group, "750")
    if d.logs is not None:      # `logs.dir`: kept like data (never deleted), owned by the service account
        add(d.logs.dir, "data", d.user, d.group, "750")
    return list(out.values())


def observed_paths(ds: Iterable[DesiredService]) -> list[str]:
    """Every directory the observation reports on (exists as a directory, as something else, or not)."""
    seen: dict[str, None] = {}
    for d in ds:
        for spec in dirs_of(d):
            seen.setdefault(spec.path, None)
    return list(seen)


# --------------------------------------------------------------------------------------------- state
@dataclass
class Owned:
    """Something recon created on a host that is not one service's alone: a shared or data directory,
    an account or a group, with the services that use it."""

    kind: str                    # dir | user | group | file
    name: str                    # path, or account / group name
    role: str = "shared"         # shared | data | account | logrotate
    services: list[str] = field(default_factory=list)
    sha256: str = ""             # a file: the sha256 of the text recon wrote (what differs is drift)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, "name": self.name, "role": self.role, "services": list(self.services)}
        return {**d, "sha256": self.sha256} if self.sha256 else d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Owned:
        return cls(str(d.get("kind", "")), str(d.get("name", "")), str(d.get("role", "shared")),
                   [str(s) for s in d.get("services") or []], str(d.get("sha256") or ""))


def find(owned: list[Owned], kind: str, name: str) -> Owned | None:
    return next((o for o in owned if o.kind == kind and o.name == name), None)


def use(owned: list[Owned], kind: str, name: str, role: str, service: str) -> Owned:
    """Record that `service` uses an owned thing (created now, or before)."""
    o = find(owned, kind, name)
    if o is None:
        o = Owned(kind, name, role, [])
        owned.append(o)
    if service not in o.services:
        o.services.append(service)
        o.services.sort()
    return o


def release(owned: list[Owned], service: str) -> list[Owned]:
    """Drop `service` from every owned thing; the shared directories no service uses any more."""
    unused = []
    for o in owned:
        if service in o.services:
            o.services.remove(service)
            if not o.services and o.kind == "dir" and o.role == "shared":
                unused.append(o)
    return unused


def record_problem(service: str, rec: ServiceRecord) -> str | None:
    """Why the paths recon's state records for a service cannot be deleted (a hand-edited state file)."""
    if not SERVICE_NAME.match(service):
        return f"the service name {service!r} in recon's state is not a service name"
    if path_problem(rec.service_dir):
        return f"its recorded service directory is unsafe: {path_problem(rec.service_dir)}"
    if posixpath.basename(rec.service_dir) != service:
        return f"its recorded service directory {rec.service_dir} is not named after the service"
    install_dir = posixpath.dirname(rec.service_dir)
    if path_problem(install_dir):
        return f"its recorded install directory is unsafe: {path_problem(install_dir)}"
    config_dir = posixpath.dirname(rec.config_path)
    if rec.config_path != f"{config_dir}/{service}.toml" or path_problem(config_dir):
        return f"its recorded config path {rec.config_path} is not {{config_dir}}/{service}.toml in a safe directory"
    if rec.env_path != f"{config_dir}/{service}.env":
        return f"its recorded secrets path {rec.env_path} is not {config_dir}/{service}.env"
    if rec.unit_name != f"provisioning-{service}.service":
        return f"its recorded unit {rec.unit_name} is not provisioning-{service}.service"
    return None


# --------------------------------------------------------------------------------------------- host scripts
def _case_system() -> str:
    """The shell `case` branches that refuse a system directory (for the on-host guards)."""
    exact = "|".join(sorted(SYSTEM_PATHS))
    return (f'{exact}) refuse "$r is a system directory";;\n'
            '    /dev/*|/proc/*|/sys/*) refuse "$r is inside a kernel filesystem";;\n'
            "    /lib*/*|/usr/lib*/*) ;;\n"
            '    /lib*|/usr/lib*) refuse "$r is a system directory";;')


_GUARD = r"""refuse() { printf 'refused: %s\n' "$*" >&2; exit 3; }
# guard DIR [strict]: not a symbolic link, not a system directory once resolved on the host, and with
# `strict` (before removing anything) resolving to exactly DIR: no symbolic link anywhere on the way
guard() {
  [ -L "$1" ] && refuse "$1 is a symbolic link"
  r=$(cd -P -- "$1" 2>/dev/null && pwd) || refuse "cannot enter $1"
  [ "${2-}" = strict ] && [ "$r" != "$1" ] && refuse "$1 resolves to $r (a symbolic link on the way)"
  case $r in
    @SYSTEM@
  esac
  return 0
}
"""


def guard_prelude() -> str:
    return _GUARD.replace("@SYSTEM@", _case_system())


def ensure_script(d: DesiredService, mine: set[str]) -> str:
    """Create what the service needs and is missing: its group and account (a system user, nologin, no
    home) and its directories (with owner and mode). Never modifies what exists, except the owner and
    mode of a data directory recon created (`mine`). Prints `CREATED<TAB>KIND<TAB>NAME` per thing created;
    exits 3 with `refused: …` when an existing account, group or path cannot be used."""
    return ensure_prelude() + ensure_body(d, mine)


def ensure_prelude() -> str:
    """The shell functions `ensure_body` calls (define once, before any number of bodies)."""
    return "\n".join(["set -u", guard_prelude(), _FIELDS, _MKD]) + "\n"


def ensure_body(d: DesiredService, mine: set[str]) -> str:
    """`ensure_script` for one service, after `ensure_prelude`."""
    q = shlex.quote
    u, g = q(d.user), q(d.group)
    lines = [f"ent=$(getent group {g}) || ent=",
             'if [ -z "$ent" ]; then',
             f"  groupadd --system {g} >&2 || refuse 'cannot create group '{g}",
             f"  printf 'CREATED\\tgroup\\t%s\\n' {g}",
             'else fields "$ent"; [ "$f3" = 0 ] && refuse "group $f1 has gid 0 (root)"; fi',
             f"ent=$(getent passwd {u}) || ent=",
             'if [ -z "$ent" ]; then',
             f"  useradd --system --gid {g} --home-dir {SYSTEM_USER_HOME} --no-create-home "
             f"--shell {SYSTEM_USER_SHELL} {u} >&2 || refuse 'cannot create account '{u}",
             f"  printf 'CREATED\\tuser\\t%s\\n' {u}",
             "else",
             '  fields "$ent"',
             '  [ "$f3" = 0 ] && refuse "account $f1 has uid 0 (root)"',
             f'  [ "$f3" -gt {SYSTEM_UID_MAX} ] && refuse "account $f1 (uid $f3) is not a system account"',
             '  case ${f7:-/bin/sh} in ' + "|".join(NOLOGIN_SHELLS) + ') ;; *) refuse "account $f1 is a login '
             'account (shell ${f7:-/bin/sh})";; esac',
             "fi"]
    for spec in dirs_of(d):
        own = "1" if spec.path in mine and spec.role == "data" else "0"
        lines.append("mkd " + " ".join(q(x) for x in (spec.path, spec.owner, spec.group, spec.mode, spec.role, own)))
    return "\n".join(lines) + "\n"


_FIELDS = r"""fields() {
  oldifs=$IFS; IFS=:; set -f; set -- $1; IFS=$oldifs; set +f
  f1=${1-}; f3=${3-}; f7=${7-}
}"""

_MKD = r"""mkd() {
  p=$1; owner=$2; grp=$3; mode=$4; role=$5; own=$6
  if [ -d "$p" ]; then
    [ "$role" = service ] && guard "$p"
    if [ "$own" = 1 ] && [ ! -L "$p" ] && [ "$(cd -P -- "$p" && pwd)" = "$p" ]; then
      chown -- "$owner:$grp" "$p" && chmod -- "$mode" "$p" || refuse "cannot set the owner of $p"
    fi
    return 0
  fi
  { [ -e "$p" ] || [ -L "$p" ]; } && refuse "$p exists and is not a directory"
  if ! mkdir -m "$mode" -- "$p" 2>/dev/null; then
    [ -d "$p" ] && return 0
    refuse "cannot create $p"
  fi
  [ "$owner:$grp" = root:root ] || chown -- "$owner:$grp" "$p" || refuse "cannot set the owner of $p"
  printf 'CREATED\tdir\t%s\n' "$p"
}"""


def parse_marks(out: str, mark: str) -> list[tuple[str, str]]:
    """(kind, name) of the `MARK<TAB>KIND<TAB>NAME` lines of a script's output."""
    res = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] == mark:
            res.append((parts[1], parts[2]))
    return res


def delete_script(service: str, rec: ServiceRecord, unused_shared: Iterable[str]) -> str:
    """Stop and remove a service: its unit, config link and secrets file, and its service directory
    only as far as recon created it (`rec.created_dirs`; None: a record from before recon tracked
    ownership, whose service directory is removed when it holds only recon's layout). The path is
    resolved on the host first (`guard`); symbolic links are removed, never followed. Shared directories
    no service uses any more are removed when empty (`rmdir`). Prints `KEPT`/`REMOVED` lines."""
    q = shlex.quote
    sd = rec.service_dir
    created = rec.created_dirs
    own_sd = created is None or sd in created
    own_rel = created is None or sd in created or f"{sd}/releases" in created
    unit = f"/etc/systemd/system/{rec.unit_name}"
    layout = "|".join(SERVICE_LAYOUT)
    lines = ["set -u", guard_prelude(),
             f"sd={q(sd)}",
             'if [ -e "$sd" ] || [ -L "$sd" ]; then guard "$sd" strict; present=1; else present=; fi',
             f"systemctl disable -q --now {q(rec.unit_name)} 2>/dev/null",
             f"rm -f -- {q(unit)}",
             f"[ -L {q(rec.config_path)} ] && rm -f -- {q(rec.config_path)}",
             f"[ -e {q(rec.config_path)} ] && printf 'KEPT\\tfile\\t%s\\n' {q(rec.config_path)}",
             f"{{ [ -f {q(rec.env_path)} ] || [ -L {q(rec.env_path)} ]; }} && rm -f -- {q(rec.env_path)}",
             'if [ -n "$present" ]; then',
             '  foreign=',
             '  for f in "$sd"/* "$sd"/.[!.]* "$sd"/..?*; do',
             '    { [ -e "$f" ] || [ -L "$f" ]; } || continue',
             f'    case ${{f##*/}} in {layout}) ;; *) foreign=1;; esac',
             '  done',
             f'  if [ {"1" if own_sd else ""!r} = 1 ] && [ -z "$foreign" ]; then',
             '    rm -rf --one-file-system -- "$sd" || refuse "cannot remove $sd"',
             "  else",
             '    rm -f -- "$sd/current" "$sd/.current.tmp"',
             ]
    if own_rel:
        lines.append('    if [ -L "$sd/releases" ]; then rm -f -- "$sd/releases"; elif [ -d "$sd/releases" ]; then '
                     'rm -rf --one-file-system -- "$sd/releases"; fi')
    lines += ["    printf 'KEPT\\tdir\\t%s\\n' \"$sd\"", "  fi", "fi"]
    for path in sorted(unused_shared, key=lambda p: (-p.count("/"), p)):   # deepest first
        lines.append(f"[ -d {q(path)} ] && [ ! -L {q(path)} ] && rmdir -- {q(path)} 2>/dev/null && "
                     f"printf 'REMOVED\\tdir\\t%s\\n' {q(path)}")
    lines.append("systemctl daemon-reload")
    return "\n".join(lines) + "\n"


def prune_script(service_dir: str, keep: Iterable[str], keep_releases: int) -> str:
    """Remove all but the `keep_releases` newest releases (and those in `keep`), inside the service's
    own `releases` directory only: it is resolved first, and each entry is removed, never followed."""
    q = shlex.quote
    rel = f"{service_dir}/releases"
    keep_args = " ".join(f"-e {q(k)}" for k in sorted(keep))
    return "\n".join([
        "set -u", guard_prelude(),
        f"[ -e {q(rel)} ] || exit 0",
        f"guard {q(service_dir)} strict",
        f"guard {q(rel)} strict",
        f"cd -P -- {q(rel)} || exit 0",
        f"ls -1t | tail -n +{keep_releases + 1} | grep -vx {keep_args} | while read -r r; do",
        '  case $r in .|..|*/*) continue;; esac',
        f'  rm -rf --one-file-system -- {q(rel)}/"$r"',
        "done",
        "true",
    ]) + "\n"


# --------------------------------------------------------------------------------------------- the plan
@dataclass
class Resource:
    """An account, group or directory a plan creates, or finds and uses as it is (plan data)."""

    host: str
    kind: str                    # account | group | directory
    name: str                    # account / group name, or path
    action: str                  # create | use
    services: list[str] = field(default_factory=list)
    detail: str = ""             # how it is created (owner, mode, shell), or what is kept


def plan_host(host: str, svcs: Mapping[str, DesiredService], actions: Mapping[str, str], observed: Any,
              owned: list[Owned], records: Mapping[str, ServiceRecord]) -> tuple[list[Resource], list[str]]:
    """What applying `actions` (service → planned action, deletes left out) creates on `host`, what it
    finds and uses as it is (listed for a service's first install), and what it refuses to use. Pure."""
    out: dict[tuple[str, str], Resource] = {}
    refused: list[str] = []

    def add(kind: str, name: str, action: str, service: str, detail: str) -> None:
        r = out.setdefault((kind, name), Resource(host, kind, name, action, [], detail))
        if service not in r.services:
            r.services.append(service)

    for name, action in actions.items():
        d = svcs[name]
        first = action == "create"
        gline = observed.groups.get(d.group)
        if gline is None:
            add("group", d.group, "create", name, "system group")
        elif problem := group_problem(gline):
            refused.append(f"{host}/{name}: {problem}: recon does not run services in it (`group:`)")
        elif first and find(owned, "group", d.group) is None:
            add("group", d.group, "use", name, "exists: used as it is, never modified")
        pline = observed.accounts.get(d.user)
        if pline is None:
            add("account", d.user, "create", name,
                f"system user, group {d.group}, shell {SYSTEM_USER_SHELL}, home {SYSTEM_USER_HOME}")
        else:
            acct = Account.parse(pline)
            problem = account_problem(acct) if acct else f"account {d.user} has an entry recon cannot read"
            if problem:
                refused.append(f"{host}/{name}: {problem}: recon runs services only as system accounts, and "
                               f"never modifies an existing one (choose another `user:`; recon creates a missing "
                               f"one as a system user)")
            elif first and find(owned, "user", d.user) is None:
                add("account", d.user, "use", name, "exists: used as it is, never modified")
        rec = records.get(name)
        mine = {o.name for o in owned if o.kind == "dir"} | set(rec.created_dirs or [] if rec else [])
        for spec in dirs_of(d):
            seen = observed.dirs.get(spec.path)
            if seen == "other":
                refused.append(f"{host}/{name}: {spec.path} exists and is not a directory")
            elif seen is None:
                if spec.role == "service" and spec.path.endswith("/releases") and \
                        observed.dirs.get(posixpath.dirname(spec.path)) is None:
                    continue     # created with its service directory: one line is enough
                add("directory", spec.path, "create", name, f"{spec.owner}:{spec.group} {spec.mode}")
            elif first and spec.role != "system" and spec.path not in mine:
                add("directory", spec.path, "use", name, "exists: used as it is, owner and mode kept")
    for r in out.values():
        r.services.sort()
    order = {"group": 0, "account": 1, "directory": 2}
    return sorted(out.values(), key=lambda r: (r.action != "create", order[r.kind], r.name)), refused
