"""Semantic checks the schema cannot express: references, cycles, port clashes, units, artifacts.

They run on the merged, defaults-applied spec, also when the schema found problems (so that one run
reports everything), which means every check here must cope with values of any type.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import Problem, did_you_mean
from reconciler.ownership import SERVICE_NAME, overlaps, path_problem
from reconciler.spec.loader import SpecPath, format_path
from reconciler.spec.merge import Merged
from reconciler.spec.template import PLACEHOLDERS, unknown_placeholders
from reconciler.spec.units import parse_count, parse_duration, parse_percent, parse_size, range_problem

if TYPE_CHECKING:
    from reconciler.spec.model import Host

_UNIT_FIELDS: dict[tuple[str, str], tuple[Any, str]] = {
    ("limits", "memory_max"): (parse_size, "a size like 512M, 4G or infinity"),
    ("limits", "memory_high"): (parse_size, "a size like 512M, 4G or infinity"),
    ("limits", "cpu_quota"): (parse_percent, "a percentage like 200%"),
    ("limits", "tasks_max"): (parse_count, "a whole number or infinity"),
    ("limits", "nofile"): (parse_count, "a whole number or infinity"),
    ("restart", "delay_s"): (parse_duration, "a duration like 10, 10s or 1min"),
    ("restart", "watchdog_s"): (parse_duration, "a duration like 30, 30s or 1min"),
    ("health", "timeout_s"): (parse_duration, "a duration like 30, 30s or 1min"),
    ("health", "interval_s"): (parse_duration, "a duration like 1, 500ms or 2s"),
}
_TOML_INT = (-(2**63), 2**63 - 1)


class _Checker:
    def __init__(self, merged: Merged) -> None:
        self.merged = merged
        self.problems: list[Problem] = []
        self.seen: set[tuple[str, str]] = set()

    def add(self, path: SpecPath, message: str, expected: str | None = None, found: str | None = None,
            per_service: bool = False) -> None:
        """Report a problem at `path`. A bad value that came from `defaults:` is reported once, at its
        `defaults.…` path, not once per service (unless the problem is about the service itself)."""
        origin = self.merged.origins.get(path)
        if not per_service and origin is not None and origin.at[:1] == ("defaults",):
            path = origin.at
        key = (format_path(path), message)
        if key in self.seen:
            return
        self.seen.add(key)
        self.problems.append(Problem(message, key[0], self.merged.origin_of(path), expected, found))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _names(value: Any) -> list[tuple[int, str]]:
    """(index, name) of the string items of a list; anything else is the schema's to report."""
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)] if isinstance(value, list) else []


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a list of names (first repeated at the end), or None.

    Self-dependencies are left out (reported on their own). Iterative: a chain of thousands of
    services must not hit Python's recursion limit.
    """
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        stack: list[str] = [root]
        on_stack = {root}
        iters = [iter(graph[root])]
        while iters:
            for dep in iters[-1]:
                if dep not in graph or dep == stack[-1] or dep in done:
                    continue
                if dep in on_stack:
                    return [*stack[stack.index(dep):], dep]
                stack.append(dep)
                on_stack.add(dep)
                iters.append(iter(graph[dep]))
                break
            else:
                iters.pop()
                node = stack.pop()
                on_stack.discard(node)
                done.add(node)
    return None


def semantic_problems(merged: Merged, check_artifacts: bool = True) -> list[Problem]:
    """Every semantic problem of a defaults-applied spec (schema-valid or not)."""
    c = _Checker(merged)
    data = _dict(merged.data)
    hosts = _dict(data.get("hosts"))
    services = _dict(data.get("services"))
    externals = _dict(data.get("external"))
    if not services and isinstance(data.get("services"), dict):
        c.add(("services",), "no services defined", expected="at least one service")
    graph: dict[str, list[str]] = {}
    ports: dict[tuple[str, int], str] = {}
    for name, svc in services.items():
        if not isinstance(svc, dict):
            continue  # the schema reports it
        base: SpecPath = ("services", name)
        if "version" not in svc:
            c.add(base, "`version` is required", expected='a version string like "5.0.0"')
        if "artifact" not in svc:
            c.add(base, "`artifact` is required", expected="{path: …, sha256: …} or {url: …, sha256: …}")
        svc_hosts: list[tuple[int, str]]
        if "hosts" not in svc:
            if not hosts:
                c.add(base, "service runs on no host", expected="`hosts:` in the service or a top-level `hosts:`")
            svc_hosts = [(-1, h) for h in hosts]
        else:
            svc_hosts = _names(svc["hosts"])
            if svc["hosts"] == []:
                c.add((*base, "hosts"), "service runs on no host", expected="at least one host name")
        for i, h in svc_hosts:
            if i >= 0 and h not in hosts:
                c.add((*base, "hosts", i), f"unknown host {h!r}",
                      expected="one of " + (", ".join(sorted(hosts)) or "(no hosts defined)"), found=h)
        deps = _names(svc.get("depends_on"))
        graph[name] = [d for _, d in deps]
        for i, dep in deps:
            if dep == name:
                c.add((*base, "depends_on", i), "a service cannot depend on itself", expected="another service",
                      found=dep, per_service=True)
            elif dep not in services and dep not in externals:
                c.add((*base, "depends_on", i), f"unknown dependency {dep!r}",
                      expected="one of the services: " + ", ".join(sorted(services))
                      + (", or the externals: " + ", ".join(sorted(externals)) if externals else ""),
                      found=_with_hint(dep, [*services, *externals]))
        port = svc.get("port")
        if isinstance(port, int) and not isinstance(port, bool):
            for _, h in svc_hosts:
                other = ports.get((h, port))
                if other is not None:
                    c.add((*base, "port"), f"port {port} on host {h!r} is already used by service {other!r}",
                          expected="one service per port on a host", found=str(port), per_service=True)
                else:
                    ports[(h, port)] = name
        _check_units(c, base, svc)
        _check_placeholders(c, base, svc)
        _check_config(c, (*base, "config"), svc.get("config"))
        _check_health_json(c, base, svc)
        if check_artifacts:
            _check_artifact(c, base, svc)
    _check_ownership(c, services)
    _check_externals(c, hosts, services, externals)
    _check_logs(c, services)
    cycle = find_cycle(graph)
    if cycle:
        c.add(("services", cycle[0], "depends_on"), "dependency cycle: " + " → ".join(cycle),
              expected="dependencies without cycles", found=" → ".join(cycle))
    return c.problems


_OWN_EXPECTED = ("an absolute, normalised path that is not a system directory (/, /etc, /usr, /var, /tmp, /opt …) "
                 "nor contains one, e.g. /opt/provisioning")


def _check_ownership(c: _Checker, services: dict[str, Any]) -> None:
    """Every directory recon writes to or deletes is its own (see reconciler.ownership): install_dir and
    `{install_dir}/{service}`, config_dir (config, secrets) and data_dir; no service directory overlaps
    another service's directories; the service account is not root."""
    from reconciler.spec.model import BUILTIN_DEFAULTS

    dirs: dict[str, dict[str, str]] = {}
    for name, svc in services.items():
        if not isinstance(svc, dict) or not SERVICE_NAME.match(str(name)):
            continue       # the schema reports it
        base: SpecPath = ("services", name)
        found: dict[str, str] = {}
        for key in ("install_dir", "config_dir", "data_dir"):
            value = svc.get(key, BUILTIN_DEFAULTS[key])
            if not isinstance(value, str):
                continue       # the schema reports it
            path = value.replace("{service}", name) if key == "data_dir" else value
            problem = path_problem(path)
            if problem:
                c.add((*base, key), f"{key} cannot be recon's: {problem}", expected=_OWN_EXPECTED, found=value,
                      per_service=key == "data_dir" and "{service}" in value)
                continue
            found[key] = path
            if key == "install_dir":
                service_dir = f"{path}/{name}"
                problem = path_problem(service_dir)
                if problem:
                    c.add((*base, key), f"the service directory {service_dir} ({key} + service name) cannot be "
                          f"recon's: {problem}", expected=_OWN_EXPECTED, found=value, per_service=True)
                else:
                    found["service_dir"] = service_dir
        if "data_dir" in found and "config_dir" in found and overlaps(found["data_dir"], found["config_dir"]):
            c.add((*base, "data_dir"), f"data_dir {found['data_dir']} overlaps config_dir {found['config_dir']}",
                  expected="a data directory apart from the config directory (the service may write its data)",
                  found=found["data_dir"], per_service=True)
        for key in ("user", "group"):
            if svc.get(key) == "root":
                c.add((*base, key), f"the service cannot run as {key} root",
                      expected="a system account (recon creates a missing one), e.g. provisioning", found="root")
        dirs[name] = found
    # a service directory is removed with its service: nothing else may live in it, nor it in another's
    for name, found in dirs.items():
        sd = found.get("service_dir")
        if sd is None:
            continue
        for other, theirs in dirs.items():
            for key, path in theirs.items():
                if (other, key) == (name, "service_dir") or (key == "install_dir" and sd.startswith(path + "/")):
                    continue      # its own, or the install dir it lives in
                if overlaps(sd, path):
                    what = "its own" if other == name else f"service {other!r}'s"
                    c.add(("services", name, "install_dir"), f"the service directory {sd} overlaps {what} "
                          f"{key.replace('_', ' ')} {path}",
                          expected="service directories apart from each other and from config and data directories",
                          found=sd, per_service=True)


def _check_logs(c: _Checker, services: dict[str, Any]) -> None:
    """`logs.dir`: a directory recon may create (not /var/log itself), apart from the config and service
    directories; services sharing one are run by the same account and group (logrotate's `su` and the
    directory's owner are one account)."""
    from reconciler.spec.model import BUILTIN_DEFAULTS

    owners: dict[str, tuple[str, str, str]] = {}     # dir -> (service, user, group) of the first to use it
    for name, svc in services.items():
        if not isinstance(svc, dict) or not SERVICE_NAME.match(str(name)):
            continue
        logs = _dict(svc.get("logs"))
        value = logs.get("dir")
        if not isinstance(value, str):
            continue       # the schema reports it
        path = value.replace("{service}", name)
        base: SpecPath = ("services", name, "logs", "dir")
        problem = path_problem(path)
        if problem:
            c.add(base, f"logs.dir cannot be recon's: {problem}",
                  expected="a directory of its own, e.g. /var/log/provisioning (not /var/log itself)", found=value,
                  per_service="{service}" in value)
            continue
        install = svc.get("install_dir", BUILTIN_DEFAULTS["install_dir"])
        for key, other in (("config_dir", svc.get("config_dir", BUILTIN_DEFAULTS["config_dir"])),
                           ("service directory", f"{install}/{name}" if isinstance(install, str) else None)):
            if isinstance(other, str) and overlaps(path, other):
                c.add(base, f"logs.dir {path} overlaps the {key.replace('_', ' ')} {other}",
                      expected="a log directory apart from the config and service directories", found=value,
                      per_service=True)
        user = str(svc.get("user", BUILTIN_DEFAULTS["user"]))
        group = str(svc.get("group") or user)
        first = owners.setdefault(path, (name, user, group))
        if first[1:] != (user, group):
            c.add(base, f"logs.dir {path} is shared with service {first[0]!r}, which runs as {first[1]}:{first[2]}, "
                  f"but this one runs as {user}:{group}",
                  expected="one account and group per log directory (it owns the directory and its files)",
                  found=value, per_service=True)


def _check_units(c: _Checker, base: SpecPath, svc: dict[str, Any]) -> None:
    for (section, key), (parse, expected) in _UNIT_FIELDS.items():
        value = _dict(svc.get(section)).get(key)
        if value is None:
            continue
        try:
            parsed = parse(value)
        except (ValueError, TypeError):
            c.add((*base, section, key), f"malformed {key.replace('_', ' ')}", expected=expected, found=repr(value))
            continue
        in_range = range_problem(key, value, parsed)
        if in_range:
            c.add((*base, section, key), f"{key} out of range", expected=in_range,
                  found=repr(value))
    limits = _dict(svc.get("limits"))
    try:
        mx = parse_size(limits.get("memory_max", "infinity"))
        hi = parse_size(limits.get("memory_high", "infinity"))
    except (ValueError, TypeError):
        return
    if range_problem("memory_max", None, mx) or range_problem("memory_high", None, hi):
        return  # reported above
    if isinstance(mx, int) and isinstance(hi, int) and hi > mx:
        c.add((*base, "limits", "memory_high"), "memory_high is above memory_max",
              expected=f"at most memory_max ({limits.get('memory_max')})", found=str(limits["memory_high"]),
              per_service=True)


def _check_placeholders(c: _Checker, base: SpecPath, svc: dict[str, Any]) -> None:
    has_port = isinstance(svc.get("port"), int)

    def walk(value: Any, path: SpecPath) -> None:
        if isinstance(value, str):
            bad = unknown_placeholders(value)
            if bad:
                c.add(path, f"unknown placeholder {{{bad[0]}}}", expected="one of " + ", ".join(
                    "{" + p + "}" for p in PLACEHOLDERS) + " (write {{ and }} for literal braces)",
                    found=value)
            elif not has_port and "{port}" in value.replace("{{", ""):
                c.add(path, "{port} is used but the service has no `port:`", expected="a `port:` in the service",
                      found=value, per_service=True)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*path, i))

    for key in ("args", "env", "config"):
        walk(svc.get(key), (*base, key))
        uses_log_file = "{log_file}" in json.dumps(svc.get(key), default=str)
        if uses_log_file and not isinstance(_dict(svc.get("logs")).get("dir"), str):
            c.add((*base, key), "{log_file} is used but the service has no `logs.dir`",
                  expected="a `logs: {dir: ...}` in the service or in defaults", found="{log_file}",
                  per_service=True)
    walk(_dict(svc.get("health")).get("http"), (*base, "health", "http"))


def _check_config(c: _Checker, path: SpecPath, value: Any) -> None:
    """`config:` is rendered as TOML: no nulls, integers within 64 bits."""
    if value is None and len(path) > 3:
        c.add(path, "null cannot be written to the TOML config",
              expected="a string, number, boolean, date, list or mapping (leave the key out instead)", found="null")
    elif isinstance(value, bool | str | float | datetime.date):
        return
    elif isinstance(value, int) and not _TOML_INT[0] <= value <= _TOML_INT[1]:
        c.add(path, "integer out of TOML's range", expected="a 64-bit signed integer", found=str(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_config(c, (*path, k), v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_config(c, (*path, i), v)


def _with_hint(name: str, choices: Any) -> str:
    """`name`, and `(did you mean X?)` when a choice is close."""
    hint = did_you_mean(name, choices).strip()
    return f"{name} ({hint[0].lower()}{hint[1:]})" if hint else name


def _check_externals(c: _Checker, hosts: dict[str, Any], services: dict[str, Any], externals: dict[str, Any]) -> None:
    """`external:` entries: known hosts, not a service's name, a unit outside recon's own namespace, something to
    check (a unit or a health URL), and a health URL wherever a dependent runs away from the external's unit."""
    from reconciler.spec.model import UNIT_PREFIX

    for name, ext in externals.items():
        if not isinstance(ext, dict):
            continue   # the schema reports it
        base: SpecPath = ("external", name)
        if name in services:
            c.add(base, f"{name!r} is both a service and an external", expected="one name for one thing", found=name)
        ext_hosts = [h for _, h in _names(ext.get("hosts"))]
        for i, h in _names(ext.get("hosts")):
            if h not in hosts:
                c.add((*base, "hosts", i), f"unknown host {h!r}",
                      expected="one of " + (", ".join(sorted(hosts)) or "(no hosts defined)"),
                      found=_with_hint(h, hosts))
        unit = ext.get("unit")
        if isinstance(unit, str) and unit.startswith(UNIT_PREFIX):
            c.add((*base, "unit"), "an external's unit cannot be one of recon's own (provisioning-*)",
                  expected="a unit recon does not manage, e.g. surrealdb.service", found=unit)
        health = ext.get("health") if isinstance(ext.get("health"), dict) else {}
        if not unit and not health.get("http"):
            c.add(base, "an external needs something to check", expected="`unit:` or `health.http`, or both",
                  found="neither")
        if health.get("expect_json") is not None and not health.get("http"):
            c.add((*base, "health", "expect_json"), "`health.expect_json` needs `health.http`",
                  expected="a health URL whose JSON answer carries these fields", found="no health.http")
        if health.get("http"):
            continue
        for svc_name, svc in services.items():
            if not isinstance(svc, dict) or name not in [d for _, d in _names(svc.get("depends_on"))]:
                continue
            svc_hosts = [h for _, h in _names(svc.get("hosts"))] if "hosts" in svc else list(hosts)
            away = [h for h in svc_hosts if h not in ext_hosts]
            if away:
                c.add((*base, "health"), f"{svc_name} depends on {name} from {', '.join(away)}, where its unit "
                      "is not: recon can only check it there through a health URL",
                      expected="`health.http` (a URL those hosts can reach)", found="no health.http")


def _check_health_json(c: _Checker, base: SpecPath, svc: dict[str, Any]) -> None:
    """`health.expect_json` needs a `health.http` to read, and JSON values (no .inf or .nan; no NUL, which the
    gate's matcher cannot take as an argument)."""
    health = svc.get("health")
    if not isinstance(health, dict) or not isinstance(health.get("expect_json"), dict):
        return
    if not health.get("http"):
        c.add((*base, "health", "expect_json"), "`health.expect_json` needs `health.http`",
              expected="a health URL whose JSON answer carries these fields", found="no health.http")
    for key, value in health["expect_json"].items():
        if isinstance(value, float) and not math.isfinite(value):
            c.add((*base, "health", "expect_json", key), "not a JSON value", expected="a finite number",
                  found=repr(value))
        if "\0" in str(key) or (isinstance(value, str) and "\0" in value):
            c.add((*base, "health", "expect_json", key), "a NUL character cannot be checked",
                  expected="text without NUL", found=repr(value))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_artifact(c: _Checker, base: SpecPath, svc: dict[str, Any]) -> None:
    art = _dict(svc.get("artifact"))
    rel = art.get("path")
    if not isinstance(rel, str) or not rel:
        return
    path_key = (*base, "artifact", "path")
    origin = c.merged.origin_of(path_key)
    try:
        p = Path(rel).expanduser()
        if not p.is_absolute() and origin is not None:
            p = Path(origin.file).parent / p
        is_file = p.is_file()
    except (OSError, ValueError, RuntimeError) as exc:  # ~unknown-user, a NUL, a name too long…
        c.add(path_key, "artifact path cannot be used", expected="a file (paths are relative to the spec file)",
              found=f"{rel} ({exc})")
        return
    if not is_file:
        c.add(path_key, "artifact file not found", expected="a file (paths are relative to the spec file)",
              found=str(p))
        return
    want = art.get("sha256")
    if not isinstance(want, str) or not want:
        return
    try:
        got = _sha256_file(p)
    except OSError as exc:
        c.add(path_key, "artifact file cannot be read", expected="a readable file", found=f"{p} ({exc.strerror})")
        return
    if got != want:
        c.add((*base, "artifact", "sha256"), f"checksum mismatch for {p}", expected=want, found=got)
        return
    entrypoint = art.get("entrypoint")
    if isinstance(entrypoint, str) and entrypoint:
        _check_archive(c, base, p, str(base[-1]), entrypoint)


def _check_archive(c: _Checker, base: SpecPath, p: Path, service: str, entrypoint: str) -> None:
    """An archive artifact's members (`archive.read_tree`): one problem per member refused, at the artifact."""
    from reconciler.archive import ArchiveError, read_tree

    try:
        read_tree(p.read_bytes(), service, entrypoint)
    except OSError as exc:
        c.add((*base, "artifact", "path"), "artifact file cannot be read", expected="a readable file",
              found=f"{p} ({exc.strerror})")
    except ArchiveError as exc:
        for r in exc.refusals:
            key = (*base, "artifact", "entrypoint") if r.member == entrypoint else (*base, "artifact", "path")
            c.add(key, f"archive {p.name}: {r}", found=r.member,
                  expected="a regular executable member" if key[-1] == "entrypoint" else
                  "directories, regular files and links that stay inside the release, each path once")


def ssh_key_problem(ssh_key: str) -> str | None:
    """Why an `ssh_key` file cannot be used (missing, a directory, unreadable), or None. `~` expands;
    a relative path is relative to the working directory, as for ssh -i."""
    path = os.path.expanduser(ssh_key)
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return f"ssh_key file {path} does not exist"
    except IsADirectoryError:
        return f"ssh_key {path} is a directory, not a private key file"
    except (OSError, ValueError) as exc:
        return f"ssh_key file {path} cannot be read ({getattr(exc, 'strerror', None) or exc})"
    return None


def ssh_key_problems(merged: Merged, hosts: Mapping[str, Host]) -> list[Problem]:
    """A problem, at the `ssh_key:` line, for each host whose key file cannot be used. Checked when a
    command is about to connect (not by `recon validate`, which also runs where the keys are not)."""
    out = []
    for name, h in hosts.items():
        if h.is_local or not h.ssh_key:
            continue
        problem = ssh_key_problem(h.ssh_key)
        if problem:
            path: SpecPath = ("hosts", name, "ssh_key")
            out.append(Problem(problem, format_path(path), merged.origin_of(path),
                               expected="a readable private key file"))
    return out
