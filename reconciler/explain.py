"""`recon explain`: where a spec value comes from and what it overrode, across layered files."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from reconciler.errors import Problem, SpecError, did_you_mean
from reconciler.spec import load_merged
from reconciler.spec.loader import SpecPath, format_path
from reconciler.spec.merge import Merged, apply_defaults

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_address(address: str) -> SpecPath:
    """`orchestrator.limits.memory_max` → ("services", "orchestrator", "limits", "memory_max").

    `args[0]` and `args.0` both address a list item; `hosts.…`, `defaults.…`, `external.…`, `version` and
    `services.…` address the top level.
    """
    parts: list[str | int] = []
    for m in _PART.finditer(address.strip()):
        parts.append(int(m.group(2)) if m.group(2) is not None else m.group(1))
    if not parts:
        raise SpecError([Problem("empty address", expected="SERVICE.PATH, e.g. orchestrator.limits.memory_max")])
    if parts[0] in ("hosts", "defaults", "services", "external", "version"):
        return tuple(parts)
    return ("services", *parts)


def _lookup(data: Any, path: SpecPath) -> tuple[Any, SpecPath]:
    """The value at `path` and the path with list indices as ints; KeyError(depth) when missing."""
    real: list[str | int] = []
    for depth, part in enumerate(path):
        if isinstance(data, dict) and str(part) in data:
            real.append(str(part))
            data = data[str(part)]
        elif isinstance(data, list) and str(part).isdigit() and int(part) < len(data):
            real.append(int(part))
            data = data[int(part)]
        else:
            raise KeyError(depth)
    return data, tuple(real)


def _show(value: Any) -> str:
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except ValueError:
        return repr(value)


def _via(origin: Any, path: SpecPath) -> str:
    return f"  (via {format_path(origin.at)})" if origin.at and origin.at != path else ""


def _builtin(path: SpecPath, merged: Merged) -> tuple[bool, Any]:
    """recon's built-in default for a service path no file sets, if there is one."""
    from reconciler.spec.model import BUILTIN_DEFAULTS

    services = merged.data.get("services")
    if len(path) < 3 or path[0] != "services" or not isinstance(services, dict) or path[1] not in services:
        return False, None
    value: Any = BUILTIN_DEFAULTS
    for part in path[2:]:
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def explain(files: Sequence[str], address: str) -> str:
    merged = load_merged(files)
    apply_defaults(merged)
    path = parse_address(address)
    try:
        value, path = _lookup(merged.data, path)
    except KeyError as exc:
        is_builtin, default = _builtin(path, merged)
        if is_builtin:
            return "\n".join([f"{format_path(path)} = {_show(default)}",
                              "  set by    recon's built-in default (no spec file sets it)"])
        depth = exc.args[0]
        parent, parent_path = _lookup(merged.data, path[:depth])
        keys = sorted(parent) if isinstance(parent, dict) else []
        if isinstance(parent, list):
            expected = f"an index below {len(parent)}" if parent else "nothing: the list is empty"
        elif keys:
            expected = "one of " + ", ".join(keys)
        else:
            expected = f"nothing: {format_path(parent_path) or 'the spec'} is {_show(parent)}"
        part = path[depth]
        if isinstance(parent, list) and str(part).isdigit():
            part = int(part)
        full = format_path((*parent_path, part, *path[depth + 1:]))
        hint = did_you_mean(str(part), keys).strip()
        what = f"{part!r} is not set in any file" + (f" under {format_path(parent_path)}" if parent_path else "")
        raise SpecError([Problem(what + (f". {hint}" if hint else ""), full,
                                 merged.origin_of(parent_path), expected=expected)]) from None
    origin = merged.origins.get(path)
    lines = [f"{format_path(path)} = {_show(value)}"]
    if origin is not None:
        lines.append(f"  set by    {origin}{_via(origin, path)}")
    for prev_origin, prev_value in reversed(merged.overridden.get(path, [])):
        lines.append(f"  overrode  {prev_origin}  {_show(prev_value)}{_via(prev_origin, path)}")
    if isinstance(value, dict):
        for key in value:
            o = merged.origins.get((*path, key))
            if o is not None:
                lines.append(f"    {key}: {o}{_via(o, (*path, key))}")
    return "\n".join(lines)
