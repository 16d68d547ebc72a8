"""`recon explain`: where a spec value comes from and what it overrode, across layered files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from reconciler.errors import Problem, SpecError
from reconciler.spec import load_merged
from reconciler.spec.loader import SpecPath, format_path
from reconciler.spec.merge import apply_defaults


def parse_address(address: str) -> SpecPath:
    """`orchestrator.limits.memory_max` → ("services", "orchestrator", "limits", "memory_max")."""
    parts: list[str | int] = [p for p in address.split(".") if p]
    if not parts:
        raise SpecError([Problem("empty address", expected="SERVICE.PATH, e.g. orchestrator.limits.memory_max")])
    if parts[0] in ("hosts", "defaults", "services", "version"):
        return tuple(parts)
    return ("services", *parts)


def _lookup(data: Any, path: SpecPath) -> Any:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and str(part).isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            raise KeyError(part)
    return data


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def explain(files: Sequence[str], address: str) -> str:
    merged = load_merged(files)
    apply_defaults(merged)
    path = parse_address(address)
    try:
        value = _lookup(merged.data, path)
    except KeyError:
        parent_keys: list[str] = []
        try:
            parent = _lookup(merged.data, path[:-1])
            parent_keys = sorted(parent) if isinstance(parent, dict) else []
        except KeyError:
            pass
        raise SpecError([Problem(f"{format_path(path)} is not set in any file", format_path(path),
                                 expected=("one of " + ", ".join(parent_keys)) if parent_keys else None)]) from None
    origin = merged.origins.get(path)
    lines = [f"{format_path(path)} = {_show(value)}"]
    if origin is not None:
        via = f"  (via {format_path(origin.at)})" if origin.at and origin.at != path else ""
        lines.append(f"  set by    {origin}{via}")
    for prev_origin, prev_value in reversed(merged.overridden.get(path, [])):
        via = f"  (via {format_path(prev_origin.at)})" if prev_origin.at and prev_origin.at != path else ""
        lines.append(f"  overrode  {prev_origin}  {_show(prev_value)}{via}")
    if isinstance(value, dict):
        for key in value:
            sub = (*path, key)
            o = merged.origins.get(sub)
            if o is not None:
                lines.append(f"    {key}: {o}")
    return "\n".join(lines)
