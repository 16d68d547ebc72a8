"""recon's records of what it applied: the one place that writes service records, ownership records and
history into the state, under one lock, saving after each step so a crash at any point leaves state that
says where the host stands. Also the rules that read records back (last healthy release, rollback target).
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from reconciler import ownership
from reconciler.desired import DesiredService
from reconciler.state import (
    RecordStatus,
    ServiceRecord,
    State,
    StateBackend,
    StateError,
    StateStore,
    current_user,
    now_iso,
)

if TYPE_CHECKING:
    from reconciler.pipeline import Run
    from reconciler.plan import Change, Plan


def record_of(d: DesiredService, salt: str, status: RecordStatus, previous: str | None, serial: int) -> ServiceRecord:
    """The state record of a desired service as recon installs it (secrets only as a salted fingerprint)."""
    return ServiceRecord(
        version=d.version, sha256=d.sha256, config_sha=d.config_sha, unit_sha=d.unit_sha,
        env_hash=d.secrets_hash(salt), config_text=d.config_text, unit_text=d.unit_text,
        service_dir=d.service_dir, config_path=d.config_path, unit_name=d.unit_name, env_path=d.env_path,
        depends_on=list(d.depends_on), previous_version=previous, status=status, applied_at=now_iso(),
        serial=serial)


def last_healthy(rec: ServiceRecord | None) -> str | None:
    """The last release recon recorded healthy for a service: the record's own release once it passed a
    health gate (applied, or rolled back to), else the release recorded before it (an apply that was
    interrupted or failed: `version` is the release that never proved healthy)."""
    if rec is None:
        return None
    if rec.status in (RecordStatus.APPLIED, RecordStatus.ROLLED_BACK):
        return rec.version
    return rec.previous_version


def rollback_target(rec: ServiceRecord | None, kept: list[str]) -> str | None:
    """Where a service that fails its health gate goes back to: the last release recorded healthy, if it
    is still kept on the host. Never what the host merely shows as `current` (it may be the release
    that just failed, after a crash, or a link set by hand)."""
    v = last_healthy(rec)
    return v if v and v in kept else None


def previous_for(rec: ServiceRecord | None, new_version: str, kept: list[str]) -> str | None:
    """The previous release to record for a service moving to `new_version`: the last one recorded
    healthy, else the one recorded before it; only a release recon recorded and still keeps on the host."""
    for v in (last_healthy(rec), rec.previous_version if rec else None):
        if v and v != new_version and v in kept:
            return v
    return None


class Recorder:
    """Writes one run's records into its state and history. Every write takes `lock` and saves the state.
    Runs whose hosts apply in parallel greenlets pass gevent's RLock; the default (a thread lock) keeps
    gevent out of a converged apply, which only settles records (~28 ms of imports)."""

    def __init__(self, store: StateBackend, state: State, salt: str, command: str = "apply",
                 lock: AbstractContextManager[Any] | None = None) -> None:
        self.store = store
        self.lost: str | None = None       # why the state's store went away mid-run (then writes go to a fallback)
        self.state = state
        self.salt = salt
        self.command = command
        self.lock = lock if lock is not None else threading.RLock()
        self.created: dict[tuple[str, str], set[str]] = {}   # (host, service) → its own dirs created, unrecorded

    def record(self, d: DesiredService, status: RecordStatus, previous: str | None, version: str | None = None,
               in_place: bool = False) -> None:
        """Record a desired service as installed, with the directories this run created for it."""
        with self.lock:
            rec = record_of(d, self.salt, status, previous, self.state.serial + 1)
            rec.in_place = in_place
            if version:
                rec.version = version
            old = self.state.record(d.host, d.service)
            new = self.created.pop((d.host, d.service), set())
            if old is not None and old.created_dirs is None and not new:
                rec.created_dirs = None        # recorded before recon tracked ownership: keep it so
            else:
                rec.created_dirs = sorted(set(old.created_dirs or [] if old else []) | new)
            self._put(d.host, d.service, rec)
            self._save()

    def _put(self, host: str, service: str, rec: ServiceRecord) -> None:
        self.state.hosts.setdefault(host, {})[service] = rec

    def restore(self, host: str, service: str, rec: ServiceRecord | None) -> None:
        """Put back a record as it was before this run recorded an intent that was not carried out (None: the
        service had no record)."""
        with self.lock:
            if rec is None:
                self.state.hosts.get(host, {}).pop(service, None)
                if not self.state.hosts.get(host, True):
                    self.state.hosts.pop(host, None)
            else:
                self._put(host, service, rec)
            self._save()

    def set_status(self, host: str, service: str, status: RecordStatus, **changes: Any) -> None:
        """Change a service's record (no record: nothing to change)."""
        with self.lock:
            rec = self.state.record(host, service)
            if rec is None:
                return
            rec.status = status
            for k, v in changes.items():
                setattr(rec, k, v)
            rec.applied_at = now_iso()
            self._save()

    def forget(self, host: str, service: str, removed: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """A deleted service: its record goes, and the directories the delete removed leave `owned`."""
        with self.lock:
            self.state.hosts.get(host, {}).pop(service, None)
            if not self.state.hosts.get(host):
                self.state.hosts.pop(host, None)
            owned = self.state.owned.get(host, [])
            ownership.release(owned, service)
            owned[:] = [o for o in owned if not (o.kind == "dir" and o.name in removed)]
            if not owned:
                self.state.owned.pop(host, None)
            self._save()

    def wrote_file(self, host: str, path: str, role: str, text: str | None, services: list[str]) -> None:
        """A host-wide file recon wrote (`text`) or removed (None): recorded in `owned` with its sha256, so
        a later edit by hand is drift and only a file recon wrote is ever removed."""
        from reconciler.desired import sha256_text

        with self.lock:
            owned = self.state.owned.setdefault(host, [])
            owned[:] = [o for o in owned if not (o.kind == "file" and o.name == path)]
            if text is not None:
                owned.append(ownership.Owned("file", path, role, sorted(services), sha256_text(text)))
            if not owned:
                self.state.owned.pop(host, None)
            self.store.save(self.state)

    def mine(self, host: str, service: str) -> set[str]:
        """The directories recon recorded as its own, on the host and for the service."""
        owned = self.state.owned.setdefault(host, [])
        rec = self.state.record(host, service)
        return {o.name for o in owned if o.kind == "dir"} | set(rec.created_dirs or [] if rec else [])

    def ensured(self, host: str, d: DesiredService, made: list[tuple[str, str]]) -> None:
        """Record what ensure_script created for a service: its own directories with its record (kept
        aside until `record` when it has none yet), the rest per host, and what it uses of the rest."""
        owned = self.state.owned.setdefault(host, [])
        rec = self.state.record(host, d.service)
        roles = {spec.path: spec.role for spec in ownership.dirs_of(d)}
        with self.lock:
            for kind, name in made:
                role = roles.get(name, "shared") if kind == "dir" else "account"
                if role == "service":
                    self.created.setdefault((host, d.service), set()).add(name)
                elif role != "system":
                    ownership.use(owned, kind, name, role, d.service)
            # what recon created earlier for other services and this one uses too
            used = {("group", d.group), ("user", d.user)} | {("dir", p) for p, r in roles.items()
                                                             if r in ("shared", "data")}
            for o in owned:
                if (o.kind, o.name) in used:
                    ownership.use(owned, o.kind, o.name, o.role, d.service)
            if rec is not None and (host, d.service) in self.created:
                rec.created_dirs = sorted(set(rec.created_dirs or []) | self.created.pop((host, d.service)))
            if not owned:
                self.state.owned.pop(host, None)
            if made or owned:
                self._save()

    def history(self, c: Change, result: str, detail: str = "") -> None:
        self.history_entry(c.host, c.service, c.action, c.from_version, c.to_version, result, detail)

    def history_entry(self, host: str, service: str, action: str, from_version: str | None, to_version: str | None,
                      result: str, detail: str = "") -> None:
        """One line of the history: who ran which command, on what, with what result."""
        import socket

        self._append({
            "time": now_iso(), "user": current_user(), "machine": socket.gethostname(),
            "command": self.command, "serial": self.state.serial, "host": host, "service": service,
            "action": action, "from": from_version, "to": to_version, "result": result, "detail": detail,
        })

    def note(self, host: str, service: str, **changes: Any) -> None:
        """Change fields of a record that no apply wrote (a `recon stop` marks who stopped it)."""
        with self.lock:
            rec = self.state.record(host, service)
            if rec is None:
                return
            for k, v in changes.items():
                setattr(rec, k, v)
            self._save()

    def settle(self, run: Run, plan: Plan) -> None:
        """Services that need no change are recorded as applied: a crash after the host converged but
        before the record was written, or a host set up to match the spec, leaves state that now agrees."""
        changed = {c.address for c in plan.changes} | set(plan.ignored_drift)
        dirty = False
        with self.lock:
            for host, svcs in run.desired.items():
                obs = run.observed.get(host)
                if obs is None or obs.error:
                    continue
                for name, d in svcs.items():
                    if d.address in changed or (run.targets is not None and name not in run.targets):
                        continue
                    o = obs.services.get(name)
                    rec = self.state.record(host, name)
                    if o is None or not o.exists or (rec is not None and rec.status == RecordStatus.APPLIED
                                                      and rec.version == d.version and rec.unit_sha == d.unit_sha
                                                      and rec.config_sha == d.config_sha):
                        continue
                    new = record_of(d, self.salt, RecordStatus.APPLIED, previous_for(rec, d.version, o.releases),
                                    self.state.serial + 1)
                    new.created_dirs = rec.created_dirs if rec else []    # adopted as found: recon created nothing
                    self._put(host, name, new)
                    dirty = True
            if dirty:
                self._save()

    # --- when the state's store goes away (issue 11) ----------------------------------------------
    def _save(self) -> None:
        """Save the state; if the store refuses or is gone (a database connection lost), keep every record
        from now on in a local fallback state directory and say so (`lost`): the run starts no new step."""
        try:
            self.store.save(self.state)
        except StateError as exc:
            self._fall_back(exc)
            self.store.save(self.state)

    def _append(self, entry: dict[str, Any]) -> None:
        try:
            self.store.append_history(entry)
        except StateError as exc:
            self._fall_back(exc)
            self.store.append_history(entry)

    def _fall_back(self, exc: StateError) -> None:
        import os
        import time

        if isinstance(self.store, StateStore) and self.lost:
            raise exc                      # the fallback directory itself failed: nothing left to try
        where = os.path.abspath(f"recon-fallback-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        self.lost = (f"{exc}. This run's records are in the directory state {where}; keep them with "
                     f"`recon state migrate --state {where} --to {self.store.location}`, or run `recon apply` "
                     "again: it reads the hosts and records what it finds")
        self.store = StateStore(where)

    def alive(self) -> bool:
        """False once the state's store is gone (checked before each wave, so no new wave starts)."""
        if self.lost:
            return False
        try:
            self.store.check()
        except StateError as exc:
            with self.lock:
                self._fall_back(exc)
                self.store.save(self.state)
            return False
        return True
