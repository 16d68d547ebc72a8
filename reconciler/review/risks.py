"""What is risky to merge in a spec change: HEAD invalid (in the words of what the change did), a
removed service or host still used, a major bump or a downgrade, a new binary under an old version,
a lower memory_max, weaker hardening, a port change under dependents, a secret in plain `env:`."""

from __future__ import annotations

import json
import re
from typing import Any

from reconciler.errors import Problem
from reconciler.review.compare import ABSENT, host_list, hosts_text
from reconciler.review.load import Side
from reconciler.review.model import ItemDiff, Risk, SpecDiff, clip
from reconciler.spec.units import INFINITY, parse_size

_VERSION = re.compile(r"^[vV]?(\d+(?:\.\d+)*)")


def _version_tuple(version: str | None) -> tuple[int, ...] | None:
    m = _VERSION.match(version or "")
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def _pad(t: tuple[int, ...], n: int) -> tuple[int, ...]:
    return t + (0,) * (n - len(t))


def _size(value: Any) -> float:
    if value is None or value is ABSENT:
        return float("inf")
    try:
        parsed = parse_size(value)
    except (ValueError, TypeError):
        return float("nan")
    return float("inf") if parsed == INFINITY else float(parsed)


_HARDENING_RANK: dict[str, dict[Any, int]] = {
    "protect_system": {"strict": 3, "full": 2, True: 1, "true": 1, "yes": 1, False: 0, "false": 0, "no": 0},
    "protect_home": {True: 2, "true": 2, "yes": 2, "read-only": 1, "tmpfs": 1, False: 0, "false": 0, "no": 0},
}


def _weaker(key: str, before: Any, after: Any) -> bool:
    ranks = _HARDENING_RANK.get(key)
    if ranks is not None:
        try:
            b, a = ranks.get(before), ranks.get(after)
        except TypeError:  # an unhashable value in an invalid spec
            return False
        return b is not None and a is not None and a < b
    return before is True and after is not True   # no_new_privileges, private_tmp, …


def _problem_risk(p: Problem, base: Side, removed: set[str], removed_hosts: set[str], deps_changed: set[str],
                  base_keys: set[tuple[str, str]]) -> Risk:
    """A HEAD validation problem as an error, in the words of what the change did when we can tell."""
    where = f"{p.origin.file}:{p.origin.line}" if p.origin and p.origin.line else (p.origin.file if p.origin
                                                                                     else None)
    parts = p.path.split(".")
    subject = parts[1] if len(parts) > 1 and parts[0] == "services" else "spec"
    m_dep = re.match(r"^unknown dependency '(.+)'$", p.message)
    m_host = re.match(r"^unknown host '(.+)'$", p.message)
    if m_dep and m_dep.group(1) in removed:
        dep = m_dep.group(1)
        msg = (f"still depends on {dep}, which this change removes: remove {dep} from its depends_on too, "
               f"or keep {dep}")
    elif m_host and m_host.group(1) in removed_hosts:
        h = m_host.group(1)
        msg = f"still runs on host {h}, which this change removes: move it off {h} first"
    elif p.message.startswith("dependency cycle"):
        msg = p.message + " (no apply order exists)"
        in_cycle = p.message.split(": ", 1)[-1].split(" → ")
        subject = next((n for n in in_cycle if n in deps_changed), subject)  # the service that closed it
    elif "is already used by service" in p.message:
        msg = "port clash: " + p.message
    else:
        msg = p.render().split(": ", 1)[1] if p.origin else p.render()
        msg = "invalid spec: " + msg.removeprefix("<spec>: ")
    if (p.path, p.message) in base_keys:
        msg += f" (already so at {base.label})"
    return Risk("error", subject, clip(msg), where)


def find_risks(base: Side, head: Side, diff: SpecDiff) -> list[Risk]:
    risks: list[Risk] = []
    removed = {d.name for d in diff.services if d.op == "-"}
    removed_hosts = {d.name for d in diff.hosts if d.op == "-"}
    deps_changed = {d.name for d in diff.services if any(f.path == "depends_on" for f in d.fields)}
    base_keys = {(p.path, p.message) for p in base.problems}
    for p in head.problems:
        risks.append(_problem_risk(p, base, removed, removed_hosts, deps_changed, base_keys))
    if head.broken:
        return risks
    b_all, h_all = base.services(), head.services()
    dependents: dict[str, list[str]] = {}
    for name, svc in h_all.items():
        deps = svc.get("depends_on")
        for dep in deps if isinstance(deps, list) else []:
            dependents.setdefault(str(dep), []).append(name)
    for d in diff.services:
        if d.op == "-":
            hosts = hosts_text(b_all[d.name].get("hosts"))
            if not any(r.subject in dependents.get(d.name, []) for r in risks):
                risks.append(Risk("warning", d.name, f"removed from the spec: `recon apply` stops it and removes "
                                  f"its unit on {hosts}", d.where))
            continue
        if d.op != "~":
            continue
        risks += _service_risks(d, b_all[d.name], h_all[d.name], dependents.get(d.name, []))
    for d in diff.services:
        for f in d.fields:
            if f.path.startswith("env.") and f.sensitive and f.op != "-":
                var = f.path.split(".", 1)[1]
                risks.append(Risk("warning", d.name, f"env {var} looks like a secret but is set in plain `env:` "
                                  f"(visible in the spec and the unit file): use `secrets: {{{var}: {{from_env: …}}}}`",
                                  f.where))
    for d in diff.hosts:
        if d.op != "-":
            continue
        ran = [s for s, svc in b_all.items() if d.name in host_list(svc)]
        still = [s for s, svc in h_all.items() if d.name in host_list(svc)]
        if ran and not still:
            risks.append(Risk("warning", f"host {d.name}", clip(
                f"removed while {', '.join(ran)} ran on it at {base.label}: recon stops managing {d.name} and leaves "
                f"them running there; drop {d.name} from their hosts and apply first, then remove the host"),
                d.where))
    order = {"error": 0, "warning": 1}
    return sorted(risks, key=lambda r: order.get(r.level, 2))


def _service_risks(d: ItemDiff, before: dict[str, Any], after: dict[str, Any], dependents: list[str]
                   ) -> list[Risk]:
    out: list[Risk] = []
    fields = {f.path: f for f in d.fields}

    def where(path: str) -> str | None:
        f = fields.get(path)
        return f.where if f else d.where

    vb, va = _version_tuple(d.version_before), _version_tuple(d.version_after)
    if vb is not None and va is not None and d.version_before != d.version_after:
        n = max(len(vb), len(va))
        pb, pa = _pad(vb, n), _pad(va, n)
        if pa < pb:
            out.append(Risk("warning", d.name, f"version downgrade {d.version_before} → {d.version_after}: check "
                            "that its config and data still work with the older release (`recon rollback` "
                            "switches to a kept release instead)", where("version")))
        elif pa[0] > pb[0] or (pa[0] == pb[0] == 0 and n > 1 and pa[1] > pb[1]):
            on = f"; its dependents: {', '.join(dependents)}" if dependents else ""
            out.append(Risk("warning", d.name, clip(f"major version bump {d.version_before} → {d.version_after}: "
                            f"check the release notes for breaking changes{on}"), where("version")))
    sha_changed = "artifact.sha256" in fields
    if sha_changed and d.version_before == d.version_after:
        out.append(Risk("warning", d.name, f"artifact checksum changed without a version change: a different "
                        f"binary under the same release {d.version_after} makes history and rollback ambiguous; "
                        "bump the version", where("artifact.sha256")))
    elif not sha_changed and d.version_before != d.version_after and before.get("artifact") and after.get("artifact"):
        out.append(Risk("warning", d.name, f"version {d.version_before} → {d.version_after} but the artifact "
                        "checksum is unchanged: is it the same binary?", where("version")))
    lb, la = before.get("limits") or {}, after.get("limits") or {}
    if isinstance(lb, dict) and isinstance(la, dict):
        mb, ma = _size(lb.get("memory_max")), _size(la.get("memory_max"))
        if ma < mb:
            old = lb.get("memory_max", "no limit")
            out.append(Risk("warning", d.name, f"memory_max lowered {old} → {la.get('memory_max')}: the kernel "
                            "reclaims and OOM-kills it above that; check its peak memory first",
                            where("limits.memory_max")))
    hb, ha = before.get("hardening") or {}, after.get("hardening") or {}
    if isinstance(hb, dict) and isinstance(ha, dict):
        weaker = [k for k in dict.fromkeys([*hb, *ha]) if _weaker(k, hb.get(k), ha.get(k))]
        if weaker:
            words = ", ".join(f"{k} {json.dumps(hb.get(k))} → {json.dumps(ha.get(k))}" for k in weaker)
            out.append(Risk("warning", d.name, clip(f"hardening weakened: {words}"), where(f"hardening.{weaker[0]}")))
    if "port" in fields and dependents and before.get("port") is not None:
        out.append(Risk("warning", d.name, clip(f"port {before.get('port')} → {after.get('port')}: check that its "
                        f"dependents ({', '.join(dependents)}) do not call the old port"), where("port")))
    return out
