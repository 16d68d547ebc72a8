"""Layer spec files left to right (mappings merge, scalars and lists replace, a later `null` removes a key)
and apply `defaults:`."""

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
                merged: Merged, overlay: bool) -> None:
    for key, value in layer_data.items():
        path = (*base, key)
        old = target.get(key, _MISSING)
        if isinstance(old, dict) and isinstance(value, dict):
            merged.origins[path] = layer.origins.get(path, merged.origins.get(path))  # type: ignore[assignment]
            _merge_into(old, value, path, layer, merged, overlay)
            continue
        if value is None and overlay:
            # a later layer's null removes the key, as in JSON Merge Patch (RFC 7386)
            if old is not _MISSING:
                prev = merged.origins.get(path)
                if prev is not None:
                    merged.overridden.setdefault(path, []).append((prev, old))
                _drop_under(merged.origins, path)
                del target[key]
            continue
        if old is not _MISSING:
            prev = merged.origins.get(path)
            _drop_under(merged.overridden, path)  # what the replaced subtree overrode is gone with it
            if prev is not None:
                merged.overridden.setdefault(path, []).append((prev, old))
            _drop_under(merged.origins, path)
        target[key] = copy.deepcopy(value)
        for p, o in layer.origins.items():
            if p[: len(path)] == path:
                merged.origins[p] = o


_MISSING = object()


def merge_layers(layers: list[Layer]) -> Merged:
    """Deep-merge parsed files in order; later files win, and a later file's `null` removes a key."""
    merged = Merged({}, [layer.file for layer in layers])
    for i, layer in enumerate(layers):
        if () not in merged.origins:
            merged.origins[()] = layer.origins.get((), Origin(layer.file, 1))
        _merge_into(merged.data, layer.data, (), layer, merged, overlay=i > 0)
    return merged


def apply_defaults(merged: Merged) -> None:
    """Deep-merge `defaults:` under every service, carrying origins and overrides along."""
    defaults = merged.data.get("defaults")
    services = merged.data.get("services")
    if not isinstance(defaults, dict) or not isinstance(services, dict):
        return
    default_origins = [(p[1:], o) for p, o in merged.origins.items() if p[:1] == ("defaults",) and len(p) > 1]
    default_overridden = [(p[1:], v) for p, v in merged.overridden.items() if p[:1] == ("defaults",) and len(p) > 1]
    own: dict[Any, dict[SpecPath, Origin]] = {}  # each service's own origins below it, found in one pass
    for p, o in merged.origins.items():
        if len(p) > 2 and p[0] == "services":
            own.setdefault(p[1], {})[p] = o
    for name, svc in list(services.items()):
        if not isinstance(svc, dict):
            continue
        base = ("services", name)
        result = copy.deepcopy(defaults)
        origins = {(*base, *p): o for p, o in default_origins}
        overridden = {(*base, *p): list(v) for p, v in default_overridden}
        svc_origins = own.get(name, {})
        _overlay(result, svc, base, merged, svc_origins, origins, overridden)
        services[name] = result
        for p in svc_origins:
            del merged.origins[p]
        merged.origins.update(origins)
        merged.overridden.update(overridden)


def _overlay(target: dict[str, Any], svc: dict[str, Any], base: SpecPath, merged: Merged,
             svc_origins: dict[SpecPath, Origin], origins: dict[SpecPath, Origin],
             overridden: dict[SpecPath, list[tuple[Origin, Any]]]) -> None:
    for key, value in svc.items():
        path = (*base, key)
        old = target.get(key, _MISSING)
        if isinstance(old, dict) and isinstance(value, dict):
            _overlay(old, value, path, merged, svc_origins, origins, overridden)
            if path in merged.origins:  # the service's own mapping is where its keys were written
                origins[path] = merged.origins[path]
            continue
        _drop_under(overridden, path)
        if old is not _MISSING and path in origins:
            overridden.setdefault(path, []).append((origins[path], old))
        _drop_under(origins, path)
        target[key] = value
        n = len(path)
        for p, o in svc_origins.items():
            if p[:n] == path:
                origins[p] = o
        if path in merged.overridden:
            overridden.setdefault(path, []).extend(merged.overridden[path])
