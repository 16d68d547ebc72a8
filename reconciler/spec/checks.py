"""Semantic checks the schema cannot express: references, cycles, port clashes, units, artifacts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from reconciler.errors import Problem
from reconciler.spec.loader import SpecPath, format_path
from reconciler.spec.merge import Merged
from reconciler.spec.template import PLACEHOLDERS, unknown_placeholders
from reconciler.spec.units import parse_count, parse_duration, parse_percent, parse_size

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


class _Checker:
    def __init__(self, merged: Merged) -> None:
        self.merged = merged
        self.problems: list[Problem] = []

    def add(self, path: SpecPath, message: str, expected: str | None = None, found: str | None = None) -> None:
        self.problems.append(Problem(message, format_path(path), self.merged.origin_of(path), expected, found))


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a list of names (first repeated at the end), or None."""
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if dep not in graph:
                continue
            if color.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in color:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        color[node] = 2
        return None

    for node in sorted(graph):
        if node not in color:
            found = visit(node)
            if found:
                return found
    return None


def semantic_problems(merged: Merged, check_artifacts: bool = True) -> list[Problem]:
    """Every semantic problem of a schema-valid, defaults-applied spec."""
    c = _Checker(merged)
    data = merged.data
    hosts = data.get("hosts") or {}
    services: dict[str, dict[str, Any]] = data.get("services") or {}
    if not services:
        c.add(("services",), "no services defined", expected="at least one service")
    graph: dict[str, list[str]] = {}
    ports: dict[tuple[str, int], str] = {}
    for name, svc in services.items():
        base: SpecPath = ("services", name)
        if "version" not in svc:
            c.add(base, "`version` is required", expected='a version string like "5.0.0"')
        if "artifact" not in svc:
            c.add(base, "`artifact` is required", expected="{path: …, sha256: …} or {url: …, sha256: …}")
        svc_hosts = svc.get("hosts")
        if svc_hosts is None:
            if not hosts:
                c.add(base, "service runs on no host", expected="`hosts:` in the service or a top-level `hosts:`")
            svc_hosts = list(hosts)
        elif not svc_hosts:
            c.add((*base, "hosts"), "service runs on no host", expected="at least one host name")
        for i, h in enumerate(svc_hosts):
            if h not in hosts:
                c.add((*base, "hosts", i), f"unknown host {h!r}",
                      expected="one of " + (", ".join(sorted(hosts)) or "(no hosts defined)"))
        deps = list(svc.get("depends_on") or [])
        graph[name] = deps
        for i, dep in enumerate(deps):
            if dep == name:
                c.add((*base, "depends_on", i), "a service cannot depend on itself")
            elif dep not in services:
                c.add((*base, "depends_on", i), f"unknown dependency {dep!r}",
                      expected="one of the services: " + ", ".join(sorted(services)))
        port = svc.get("port")
        if isinstance(port, int):
            for h in svc_hosts:
                other = ports.get((h, port))
                if other is not None:
                    c.add((*base, "port"), f"port {port} on host {h!r} is already used by service {other!r}",
                          expected="one service per port on a host", found=str(port))
                else:
                    ports[(h, port)] = name
        for (section, key), (parse, expected) in _UNIT_FIELDS.items():
            value = (svc.get(section) or {}).get(key)
            if value is None:
                continue
            try:
                parse(value)
            except (ValueError, TypeError):
                c.add((*base, section, key), f"malformed {key.replace('_', ' ')}", expected=expected,
                      found=repr(value))
        limits = svc.get("limits") or {}
        try:
            mx, hi = parse_size(limits.get("memory_max", "infinity")), parse_size(limits.get("memory_high",
                                                                                          "infinity"))
            if isinstance(mx, int) and isinstance(hi, int) and hi > mx:
                c.add((*base, "limits", "memory_high"), "memory_high is above memory_max",
                      expected=f"at most memory_max ({limits.get('memory_max')})", found=str(limits["memory_high"]))
        except (ValueError, TypeError):
            pass
        _check_placeholders(c, base, svc)
        if check_artifacts:
            _check_artifact(c, base, svc)
    cycle = find_cycle(graph)
    if cycle:
        first = cycle[0]
        c.add(("services", first, "depends_on"), "dependency cycle: " + " → ".join(cycle),
              expected="dependencies without cycles")
    return c.problems


def _check_placeholders(c: _Checker, base: SpecPath, svc: dict[str, Any]) -> None:
    def walk(value: Any, path: SpecPath) -> None:
        if isinstance(value, str):
            bad = unknown_placeholders(value)
            if bad:
                c.add(path, f"unknown placeholder {{{bad[0]}}}", expected="one of " + ", ".join(
                    "{" + p + "}" for p in PLACEHOLDERS) + " (write {{ and }} for literal braces)",
                    found=value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*path, i))

    for key in ("args", "env", "config"):
        walk(svc.get(key), (*base, key))
    walk((svc.get("health") or {}).get("http"), (*base, "health", "http"))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_artifact(c: _Checker, base: SpecPath, svc: dict[str, Any]) -> None:
    art = svc.get("artifact") or {}
    rel = art.get("path")
    if not rel:
        return
    path_key = (*base, "artifact", "path")
    origin = c.merged.origin_of(path_key)
    p = Path(rel).expanduser()
    if not p.is_absolute() and origin is not None:
        p = Path(origin.file).parent / p
    if not p.is_file():
        c.add(path_key, "artifact file not found", expected="a file (paths are relative to the spec file)",
              found=str(p))
        return
    want = art.get("sha256")
    if not want:
        return
    got = _sha256_file(p)
    if got != want:
        c.add((*base, "artifact", "sha256"), f"checksum mismatch for {p}", expected=want, found=got)
