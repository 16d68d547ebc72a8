"""The state lock's scope of a changing command: which hosts (and service) `apply`, `rollback`, `destroy`
and the operate commands lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.spec import Spec


def lock_scope(store: Any, files: tuple[str, ...], hosts: tuple[str, ...], service: str | None = None
               ) -> tuple[Spec | None, list[str] | None]:
    """(the spec, loaded to know them, and the hosts a run touches) for a backend that locks per host;
    (None, None) for one that locks the whole state. The spec goes on to `pipeline.prepare`, so it is
    read once and the run applies the very spec whose hosts it locked."""
    if not store.per_host_locks:
        return None, None
    from reconciler.spec import load_spec

    spec = load_spec(files)
    names = spec.services[service].hosts if service and service in spec.services else list(spec.hosts)
    return spec, sorted(h for h in names if not hosts or h in hosts)
