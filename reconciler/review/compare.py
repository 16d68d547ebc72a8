"""What changed between the two sides of a review: per service and per host, field by field.

Services are compared as recon builds them (built-in defaults, then `defaults:`, then the service),
config keys by dotted path, lists of hosts and dependencies item by item; secrets by their source
only (`env VAULT_TOKEN`), and env vars whose names look secret with their values hidden.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from reconciler.review.load import Side
from reconciler.review.model import FieldDiff, ItemDiff
from reconciler.spec.loader import SpecPath

HIDDEN = "(hidden)"                       # an env value whose name looks like a secret
SET_FIELDS = ("hosts", "depends_on")      # lists shown item by item (+ node2, - vault-service)
FIELD_ORDER = ("version", "artifact", "hosts", "port", "depends_on")
_SECRETISH = re.compile(r"PASSW|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_?KEY|(^|_)KEY$", re.IGNORECASE)
_NOT_SECRETISH = re.compile(r"_(FILE|PATH|ENV|DIR|TTL|URL|ID|NAME|ROTATION\w*)$", re.IGNORECASE)
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class Absent:
    """A key that is not there (as opposed to a key set to null)."""


ABSENT: Any = Absent()


def before_after(f: FieldDiff, limit: int = 80) -> tuple[str, str]:
    """Both values of a changed field as short display strings (the plan's rules)."""
    from reconciler.plan import FieldChange
    from reconciler.render.common import before_after as plan_before_after

    return plan_before_after(FieldChange(f.path, f.before, f.after), limit)


def _key_path(base: str, key: Any) -> str:
    k = str(key)
    part = k if _PLAIN_KEY.match(k) else json.dumps(k, ensure_ascii=False)
    return f"{base}.{part}" if base else part


def _walk(before: Any, after: Any, path: str, spath: SpecPath, out: list[tuple[str, SpecPath, Any, Any]]) -> None:
    """Leaf differences; a mapping that appears or goes away is walked against an empty one."""
    if before is not ABSENT and after is not ABSENT and before == after and type(before) is type(after):
        return
    b_map, a_map = isinstance(before, dict), isinstance(after, dict)
    if (b_map or before is ABSENT) and (a_map or after is ABSENT) and (b_map or a_map):
        b = before if b_map else {}
        a = after if a_map else {}
        if not b and not a:
            out.append((path, spath, before, after))
            return
        for key in dict.fromkeys([*b, *a]):
            _walk(b.get(key, ABSENT), a.get(key, ABSENT), _key_path(path, key), (*spath, key), out)
        return
    out.append((path, spath, before, after))


def _op(before: Any, after: Any) -> str:
    return "+" if before is ABSENT else "-" if after is ABSENT else "~"


def _val(v: Any) -> Any:
    return None if v is ABSENT else v


def secretish(name: str) -> bool:
    """An env var name that looks like it holds a secret (`API_TOKEN`, `DB_PASSWORD`, not `TOKEN_FILE`)."""
    return bool(_SECRETISH.search(name)) and not _NOT_SECRETISH.search(name)


def _secret_source(spec: Any) -> str:
    if isinstance(spec, dict):
        if spec.get("from_env"):
            return f"env {spec['from_env']}"
        if spec.get("from_file"):
            return f"file {spec['from_file']}"
    return "(unknown source)"


def _ordered_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    keys = list(dict.fromkeys([*after, *before]))
    first = [k for k in FIELD_ORDER if k in keys]
    return first + [k for k in keys if k not in first]


def _fields(before: dict[str, Any], after: dict[str, Any], where: Callable[[SpecPath, str], str | None]
            ) -> list[FieldDiff]:
    """Field differences of one service (or host); `where(path, op)` names the file and line."""
    out: list[FieldDiff] = []
    for key in _ordered_keys(before, after):
        b, a = before.get(key, ABSENT), after.get(key, ABSENT)
        if key == "secrets":
            bs = b if isinstance(b, dict) else {}
            as_ = a if isinstance(a, dict) else {}
            for name in dict.fromkeys([*as_, *bs]):
                sb = _secret_source(bs[name]) if name in bs else ABSENT
                sa = _secret_source(as_[name]) if name in as_ else ABSENT
                if sb != sa:
                    op = _op(sb, sa)
                    out.append(FieldDiff(_key_path("secrets", name), op, _val(sb), _val(sa), True,
                                         where(("secrets", name), op)))
            continue
        if key in SET_FIELDS and isinstance(b, list | Absent) and isinstance(a, list | Absent):
            b, a = ([] if b is ABSENT else b), ([] if a is ABSENT else a)
            if b == a:
                continue
            if sorted(map(str, b)) == sorted(map(str, a)):  # only the order changed
                out.append(FieldDiff(key, "~", b, a, where=where((key,), "~")))
                continue
            for item in a:
                if item not in b:
                    out.append(FieldDiff(key, "+", None, item, where=where((key,), "+")))
            for item in b:
                if item not in a:
                    out.append(FieldDiff(key, "-", item, None, where=where((key,), "-")))
            continue
        leaves: list[tuple[str, SpecPath, Any, Any]] = []
        _walk(b, a, key, (key,), leaves)
        for path, spath, lb, la in leaves:
            op = _op(lb, la)
            hide = key == "env" and len(spath) == 2 and secretish(str(spath[1]))
            vb, va = _val(lb), _val(la)
            if hide:
                vb, va = (HIDDEN if vb is not None else None), (HIDDEN if va is not None else None)
                if op == "~" and vb == va:
                    va = HIDDEN + " (changed)"
            out.append(FieldDiff(path, op, vb, va, hide, where(spath, op)))
    return out


def host_list(svc: dict[str, Any]) -> list[str]:
    hosts = svc.get("hosts")
    return [str(h) for h in hosts] if isinstance(hosts, list) else []


def hosts_text(hosts: Any) -> str:
    return ", ".join(map(str, hosts)) if isinstance(hosts, list) else str(hosts)


def _service_summary(d: ItemDiff, svc: dict[str, Any]) -> tuple[str, bool]:
    """The summary of a service's change, and whether it states that change in full (one field, with its
    values): the text then prints the field line alone."""
    if d.op == "+":
        port = f", port {svc['port']}" if svc.get("port") is not None else ""
        return f"new service, version {d.version_after} on {hosts_text(svc.get('hosts'))}{port}", False
    if d.op == "-":
        return f"removed (was version {d.version_before} on {hosts_text(svc.get('hosts'))})", False
    parts: list[str] = []
    bumped = d.version_before != d.version_after
    if bumped:
        parts.append(f"version {d.version_before} → {d.version_after}")
    sections: dict[str, list[FieldDiff]] = {}
    for f in d.fields:
        top = re.split(r"[.\[]", f.path, maxsplit=1)[0]
        if top != "version" and not (bumped and top == "artifact"):  # a new release brings a new artifact
            sections.setdefault(top, []).append(f)
    words = [_section_words(top, fs) for top, fs in sections.items()]
    parts += [w for w, _ in words]
    in_full = len(d.fields) == 1 and (all(full for _, full in words) if sections else bumped)
    return "; ".join(parts), in_full


def _section_words(top: str, fields: list[FieldDiff]) -> tuple[str, bool]:
    """`config.server.workers 8 → 16`, `hosts +node2 -node3`, `config (3 changes)`; and whether the words
    give every field of the section with its values."""
    if top in SET_FIELDS and all(f.op != "~" for f in fields):
        return top + " " + " ".join(f"{f.op}{f.after if f.op == '+' else f.before}" for f in fields), True
    if len(fields) == 1:
        f = fields[0]
        if f.op == "~" and not f.sensitive:
            b, a = before_after(f, 24)
            if len(b) + len(a) <= 40:
                return f"{f.path} {b} → {a}", True
        return f"{f.op if f.op != '~' else ''}{f.path}", False
    return f"{top} ({len(fields)} changes)", False


def service_diffs(base: Side, head: Side) -> list[ItemDiff]:
    b_all, h_all = base.services(), head.services()
    h_raw = head.raw_services()
    out: list[ItemDiff] = []
    for name in dict.fromkeys([*h_all, *b_all]):
        def where(spath: SpecPath, op: str, name: str = name) -> str | None:
            side = base if op == "-" else head
            return side.origin(("services", name, *spath))

        vb = str(b_all[name].get("version")) if name in b_all else None
        vh = str(h_all[name].get("version")) if name in h_all else None
        if name not in b_all:
            d = ItemDiff(name, "+", "", _fields({}, h_raw[name], where), None, vh, head.origin(("services", name)))
            d.summary, d.summary_in_full = _service_summary(d, h_all[name])
        elif name not in h_all:
            d = ItemDiff(name, "-", "", [], vb, None, base.origin(("services", name)))
            d.summary, d.summary_in_full = _service_summary(d, b_all[name])
        else:
            fields = _fields(b_all[name], h_all[name], where)
            if not fields:
                continue
            d = ItemDiff(name, "~", "", fields, vb, vh, head.origin(("services", name)))
            d.summary, d.summary_in_full = _service_summary(d, h_all[name])
        out.append(d)
    return out


def host_diffs(base: Side, head: Side) -> list[ItemDiff]:
    bh, hh = base.host_map(), head.host_map()
    b_services = base.services()
    out: list[ItemDiff] = []
    for name in dict.fromkeys([*hh, *bh]):
        def where(spath: SpecPath, op: str, name: str = name) -> str | None:
            return (base if op == "-" else head).origin(("hosts", name, *spath))

        if name not in bh:
            h = hh[name]
            addr = h.get("address") or ("local" if h.get("connector") == "local" else name)
            out.append(ItemDiff(name, "+", f"new host ({addr})", _fields({}, h, where),
                                where=head.origin(("hosts", name))))
        elif name not in hh:
            ran = [s for s, svc in b_services.items() if name in host_list(svc)]
            addr = bh[name].get("address") or name
            summary = f"removed (was {addr}" + (f"; ran {', '.join(ran)} at {base.label})" if ran else ")")
            out.append(ItemDiff(name, "-", summary, [], where=base.origin(("hosts", name))))
        else:
            fields = _fields(bh[name], hh[name], where)
            if fields:
                out.append(ItemDiff(name, "~", ", ".join(dict.fromkeys(f.path for f in fields)), fields,
                                    where=head.origin(("hosts", name))))
    return out
