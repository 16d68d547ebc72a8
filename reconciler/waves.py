"""Topological dependency waves of services: wave N holds services whose dependencies are all earlier."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def waves_of(deps: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Group names into waves; unknown dependencies are ignored, a cycle raises ValueError."""
    remaining = {name: {d for d in ds if d in deps and d != name} for name, ds in deps.items()}
    out: list[list[str]] = []
    done: set[str] = set()
    while remaining:
        ready = sorted(n for n, ds in remaining.items() if ds <= done)
        if not ready:
            raise ValueError("dependency cycle among: " + ", ".join(sorted(remaining)))
        out.append(ready)
        done.update(ready)
        for n in ready:
            del remaining[n]
    return out


def waves(spec: object) -> list[list[str]]:
    """Waves of a Spec's services."""
    services = spec.services  # type: ignore[attr-defined]
    return waves_of({name: svc.depends_on for name, svc in services.items()})
