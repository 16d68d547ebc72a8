"""`recon state show|pull|push|migrate`: the state itself, on its backend (issue 11)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ReconError


@dataclass(frozen=True)
class StateShowRequest:
    state: str | None = None


@dataclass(frozen=True)
class StatePullRequest:
    state: str | None = None


@dataclass(frozen=True)
class StatePushRequest:
    file: str
    state: str | None = None
    lock_timeout: float = 0.0


@dataclass(frozen=True)
class StateMigrateRequest:
    to: str
    state: str | None = None
    lock_timeout: float = 0.0


@dataclass
class StateShowResult:
    location: str
    state: Any                       # state.State
    locks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StatePushResult:
    location: str
    lineage: str
    serial: int
    written: bool                    # False: the store already held exactly this state


@dataclass
class StateMigrateResult:
    source: str
    target: str
    lineage: str
    serial: int
    hosts: int
    history_copied: int
    history_total: int


def run_state_show(req: StateShowRequest) -> StateShowResult:
    from reconciler import pipeline

    store = pipeline.open_store(req.state)
    try:
        return StateShowResult(store.location, store.load(), store.locks())
    finally:
        store.close()


def run_state_pull(req: StatePullRequest) -> bytes:
    """The state document (the directory backend's `recon.state.json` format), for a backup."""
    from reconciler import pipeline

    store = pipeline.open_store(req.state)
    try:
        state = store.load()
    finally:
        store.close()
    if not state.lineage:
        raise ReconError(f"no state in {store.location} yet: nothing to pull")
    return state.to_json()


def _read_state_file(path: str) -> Any:
    """A state file (or a state directory's), checked as `recon` reads its own."""
    from pathlib import Path

    from reconciler.state import StateStore

    p = Path(path)
    if p.is_dir():
        p = p / "recon.state.json"
    if not p.is_file():
        raise ReconError(f"{path}: no such state file")

    class _File(StateStore):
        @property
        def path(self) -> Path:
            return p

    return _File(p.parent).load()


def run_state_push(req: StatePushRequest) -> StatePushResult:
    """Restore a pulled state: refused if it is another lineage or older than the stored state."""
    from reconciler import pipeline

    new = _read_state_file(req.file)
    if not new.lineage:
        raise ReconError(f"{req.file}: the state has no lineage; recon writes one with every state")
    store = pipeline.open_store(req.state)
    try:
        with store.lock(f"recon state push {req.file}", timeout=req.lock_timeout):
            old = store.load()
            if old.lineage and old.lineage != new.lineage:
                raise ReconError(f"not pushing {req.file}: its lineage {new.lineage} is not the lineage of the "
                                 f"state in {store.location} ({old.lineage}); it is another state")
            if old.lineage and new.serial < old.serial:
                raise ReconError(f"not pushing {req.file}: it is at serial {new.serial}, older than the state in "
                                 f"{store.location} (serial {old.serial}); pull again, or push a newer file")
            if old.lineage and old.to_json() == new.to_json():
                return StatePushResult(store.location, new.lineage, old.serial, False)
            if old.lineage and new.serial == old.serial:
                new.serial += 1          # same serial, other content: the write must be seen as a new one
            store.replace(new)
            return StatePushResult(store.location, new.lineage, new.serial, True)
    finally:
        store.close()


def run_state_migrate(req: StateMigrateRequest) -> StateMigrateResult:
    """Copy state and history from `--state` to `--to` (either a directory or a URL); refused if the target
    holds another lineage or a newer serial. History entries already in the target are not copied again."""
    import json

    from reconciler import pipeline
    from reconciler.state import open_store

    src = pipeline.open_store(req.state)
    dst = open_store(req.to)
    if src.location == dst.location:
        raise ReconError(f"--to {dst.location} is the state itself (--state): nothing to migrate")
    try:
        state = src.load()
        if not state.lineage:
            raise ReconError(f"no state in {src.location}: nothing to migrate")
        entries, _ = src.read_history()
        with dst.lock(f"recon state migrate --to {dst.location}", timeout=req.lock_timeout):
            old = dst.load()
            if old.lineage and old.lineage != state.lineage:
                raise ReconError(f"not migrating: {dst.location} already holds another state (lineage {old.lineage}, "
                                 f"serial {old.serial}); this state is lineage {state.lineage}")
            if old.lineage and old.serial > state.serial:
                raise ReconError(f"not migrating: {dst.location} holds this state at serial {old.serial}, newer "
                                 f"than {src.location} (serial {state.serial})")
            have = {json.dumps(e, sort_keys=True) for e in dst.read_history()[0]}
            new = [e for e in entries if json.dumps(e, sort_keys=True) not in have]
            dst.replace(state)
            if hasattr(dst, "append_many"):
                dst.append_many(new)
            else:
                for e in new:
                    dst.append_history(e)
            return StateMigrateResult(src.location, dst.location, state.lineage, state.serial, len(state.hosts),
                                      len(new), len(entries))
    finally:
        src.close()
        dst.close()
