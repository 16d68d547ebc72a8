"""Layer spec files left to right (mappings merge, scalars and lists replace) and apply `defaults:`."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import Origin
from reconciler.spec.loader import Layer, SpecPath


@dataclass
class Merged:
    """The merged document, the origin of every final value, and the values each one overrode."""

    data: dict[str, Any]
    files: list[str]
    origins: dict[SpecPath, Origin] = field(default_factory=dict)
    overridden: dict[SpecPath, list[tuple[Origin, Any]]] = field(default_factory=dict)

    def origin_of(self, path: SpecPath) -> Origin | None:
        """The origin of `path`, or of its nearest ancestor that has one."""
        while True:
            if path in self.origins:
                return self.origins[path]
            if not path:
                return None
            path = path[:-1]


def _drop_under(origins: dict[SpecPath, Any], path: SpecPath) -> None:
    n = len(path)
    for key in [k for k in origins if len(k) > n and k[:n] == path]:
        del origins[key]


def _merge_into(target: dict[str, Any], layer_data: dict[str, Any], base: SpecPath, layer: Layer,
                merged: Merged) -> None:
    for key, value in layer_data.items():
        path = (*base, key)
        old = target.get(key, _MISSING)
        if isinstance(old, dict) and isinstance(value, dict):
            merged.origins[path] = layer.origins.get(path, merged.origins.get(path))  # type: ignore[assignment]
            _merge_into(old, value, path, layer, merged)
            continue
        if old is not _MISSING:
            prev = merged.origins.get(path)
            if prev is not None:
                merged.overridden.setdefault(path, []).append((prev, old))
            _drop_under(merged.origins, path)
        target[key] = copy.deepcopy(value)
        for p, o in layer.origins.items():
            if p[: len(path)] == path:
                merged.origins[p] = o


_MISSING = object()


def merge_layers(layers: list[Layer]) -> Merged:
    """Deep-merge parsed files in order; later files win."""
    merged = Merged({}, [layer.file for layer in layers])
    for layer in layers:
        if () not in merged.origins:
            merged.origins[()] = layer.origins.get((), Origin(layer.file, 1))
        _merge_into(merged.data, layer.data, (), layer, merged)
    return merged


def apply_defaults(merged: Merged) -> None:
    """Deep-merge `defaults:` under every service, carrying origins and overrides along."""
    defaults = merged.data.get("defaults")
    services = merged.data.get("services")
    if not isinstance(defaults, dict) or not isinstance(services, dict):
        return
    for name, svc in list(services.items()):
        if not isinstance(svc, dict):
            continue
        base = ("services", name)
        result = copy.deepcopy(defaults)
        origins = {(*base, *p[1:]): o for p, o in merged.origins.items() if p[:1] == ("defaults",) and p}
        overridden = {(*base, *p[1:]): list(v) for p, v in merged.overridden.items() if p[:1] == ("defaults",)}
        _overlay(result, svc, base, merged, origins, overridden)
        services[name] = result
        for p in [p for p in merged.origins if p[:2] == base and len(p) > 2]:
            del merged.origins[p]
        merged.origins.update({p: o for p, o in origins.items() if len(p) > 2})
        for p, v in overridden.items():
            merged.overridden[p] = v


def _overlay(target: dict[str, Any], svc: dict[str, Any], base: SpecPath, merged: Merged,
             origins: dict[SpecPath, Origin], overridden: dict[SpecPath, list[tuple[Origin, Any]]]) -> None:
    for key, value in svc.items():
        path = (*base, key)
        old = target.get(key, _MISSING)
        if isinstance(old, dict) and isinstance(value, dict):
            _overlay(old, value, path, merged, origins, overridden)
            if path in merged.origins:
                origins.setdefault(path, merged.origins[path])
            continue
        if old is not _MISSING and path in origins:
            overridden.setdefault(path, []).append((origins[path], old))
        _drop_under(origins, path)
        target[key] = value
        for p, o in merged.origins.items():
            if p[: len(path)] == path:
                origins[p] = o
        if path in merged.overridden:
            overridden.setdefault(path, []).extend(merged.overridden[path])
