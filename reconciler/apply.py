"""Apply a plan with pyinfra: releases, configs, units, dependency waves, health gates, automatic
rollback, rolling host batches, and step-by-step state records so a crash at any point converges.

Output is not formatted here: every step is reported through an `on_event(Event)` callback.
"""

from __future__ import annotations

import base64
import io
import logging
import shlex
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from gevent.lock import RLock
from pyinfra.api.operation import add_op
from pyinfra.api.state import StateStage
from pyinfra.operations import files, systemd

from reconciler import ownership
from reconciler.desired import DesiredService, sha256_text
from reconciler.errors import ReconError
from reconciler.outcome import ApplyResult, Event, EventKind, Outcome, Result
from reconciler.plan import Action, Change, Effect, Part, Plan, dropin_field
from reconciler.state import RecordStatus, ServiceRecord, State, StateStore, now_iso

JOB_MODE = "--job-mode=ignore-requirements"   # restart only this unit; dependents keep running


_DONE = {Action.CREATE: Result.CREATED, Action.UPDATE: Result.UPDATED, Action.REPLACE: Result.REPLACED,
         Action.RESTART: Result.RESTARTED, Action.RELOAD: Result.RELOADED, Action.DELETE: Result.DELETED}
_NEW_RELEASE = (Action.CREATE, Action.REPLACE)          # a new release directory
_SAME_RELEASE = (Action.UPDATE, Action.RELOAD)          # files of the running release change in place


def load_artifact(d: DesiredService, path: Path | None, url: str | None) -> bytes:
    """The artifact's bytes, checked against the spec's sha256 before anything is uploaded."""
    if path is not None:
        data = path.read_bytes()
    elif url:
        with urllib.request.urlopen(url, timeout=60) as resp:
            data = resp.read()
    else:
        raise ReconError(f"{d.service}: no artifact path or url")
    got = sha256_text(data)
    if got != d.sha256:
        raise ReconError(f"{d.service}: artifact checksum mismatch (expected {d.sha256}, got {got})")
    return data


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


class Applier:
    """Carries out one plan. `session` is an open `transport.Session` (its pyinfra State is reused)."""

    def __init__(self, run: Any, plan: Plan, session: Any, on_event: Callable[[Event], None],
                 command: str = "apply", auto_rollback: bool = True) -> None:
        self.run = run
        self.plan = plan
        self.session = session
        self.on_event = on_event
        self.command = command
        self.auto_rollback = auto_rollback
        self.store: StateStore = run.store
        self.state: State = run.state
        self.lock = RLock()
        self.result = ApplyResult()
        self.artifacts: dict[str, bytes] = {}
        st = session.state
        st.set_stage(StateStage.Execute)
        st.is_executing = True
        self._op_seq = 0
        self.fallback: dict[tuple[str, str], str | None] = {}   # (host, service) -> release to go back to
        self.created: dict[tuple[str, str], set[str]] = {}   # (host, service) → its own dirs created, unrecorded
        self.op_errors = _OpErrors()
        self.lost: dict[str, str] = {}   # hosts whose connection went away mid-apply, and the error
        logging.getLogger("pyinfra").addHandler(self.op_errors)

    # --- pyinfra operations ------------------------------------------------------------------------
    def op(self, host: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run one pyinfra operation on one host now; raise on failure."""
        self._op_seq += 1
        h = self.session.by_name[host]
        self.session.commands[host] = self.session.commands.get(host, 0) + 1
        try:
            add_op(self.session.state, fn, *args, host=h, name=f"recon {self._op_seq} {host}", **kwargs)
        except Exception as exc:
            what = getattr(fn, "__name__", "operation")
            detail = self.op_errors.last(h.name) or _short(exc)
            raise ReconError(f"{what} failed: {detail}") from None

    def sh(self, host: str, script: str, timeout: int | None = None, stdin: str | None = None) -> tuple[bool, str]:
        res = self.session.run(host, script, timeout=timeout, stdin=stdin)
        if res.lost:
            self.lost.setdefault(host, res.stderr)
        return res.ok, (res.stdout + ("\n" + res.stderr if res.stderr else "")).strip()

    def connection_lost(self, host: str) -> str | None:
        """Why `host` cannot be reached any more (probed with `true` after a step failed), or None."""
        if host not in self.lost:
            self.sh(host, "true", timeout=15)
        return self.lost.get(host)

    def lost_detail(self, host: str, c: Change, done: str, not_done: str) -> str:
        """What an operator needs when a host went away mid-apply: what happened, what was and was not
        done, and what to run next."""
        back = (f", or `recon rollback {c.service} --host {host} --to {c.from_version}`"
                if c.from_version and c.from_version != c.to_version else "")
        return (f"{host} became unreachable ({self.lost.get(host, 'connection lost')}). Done: {done}. Not done: "
                f"{not_done}. When {host} is reachable again, run `recon plan` to see where it stands, then "
                f"`recon apply` to finish{back}")

    def emit(self, kind: EventKind, host: str = "", service: str = "", message: str = "", wave: int = 0) -> None:
        self.on_event(Event(kind, host, service, message, wave))

    # --- state -----------------------------------------------------------------------------------
    def record(self, d: DesiredService, status: RecordStatus, previous: str | None, version: str | None = None,
               in_place: bool = False) -> None:
        with self.lock:
            rec = record_of(d, self.run.salt, status, previous, self.state.serial + 1)
            rec.in_place = in_place
            if version:
                rec.version = version
            old = self.state.record(d.host, d.service)
            new = self.created.pop((d.host, d.service), set())
            if old is not None and old.created_dirs is None and not new:
                rec.created_dirs = None        # recorded before recon tracked ownership: keep it so
            else:
                rec.created_dirs = sorted(set(old.created_dirs or [] if old else []) | new)
            self.state.hosts.setdefault(d.host, {})[d.service] = rec
            self.store.save(self.state)

    def set_status(self, host: str, service: str, status: RecordStatus, **changes: Any) -> None:
        with self.lock:
            rec = self.state.record(host, service)
            if rec is None:
                return
            rec.status = status
            for k, v in changes.items():
                setattr(rec, k, v)
            rec.applied_at = now_iso()
            self.store.save(self.state)

    def forget(self, host: str, service: str, removed: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        with self.lock:
            self.state.hosts.get(host, {}).pop(service, None)
            if not self.state.hosts.get(host):
                self.state.hosts.pop(host, None)
            owned = self.state.owned.get(host, [])
            ownership.release(owned, service)
            owned[:] = [o for o in owned if not (o.kind == "dir" and o.name in removed)]
            if not owned:
                self.state.owned.pop(host, None)
            self.store.save(self.state)

    def ensure(self, host: str, d: DesiredService) -> None:
        """Create the service's missing account, group and directories (never modifying existing ones)
        and record what was created: its own directories with its record, the rest per host."""
        owned = self.state.owned.setdefault(host, [])
        rec = self.state.record(host, d.service)
        mine = {o.name for o in owned if o.kind == "dir"} | set(rec.created_dirs or [] if rec else [])
        ok, out = self.sh(host, ownership.ensure_script(d, mine))
        made = ownership.parse_marks(out, "CREATED")
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
                self.store.save(self.state)
        if not ok:
            lines = [x for x in out.splitlines() if not x.startswith("CREATED\t")]
            raise ReconError("; ".join(lines) or "creating the account and directories failed")

    def history(self, c: Change, result: str, detail: str = "") -> None:
        import getpass
        import socket

        self.store.append_history({
            "time": now_iso(), "user": getpass.getuser(), "machine": socket.gethostname(),
            "command": self.command, "serial": self.state.serial, "host": c.host, "service": c.service,
            "action": c.action, "from": c.from_version, "to": c.to_version, "result": result, "detail": detail,
        })

    def outcome(self, c: Change, result: Result, detail: str = "") -> None:
        with self.lock:
            self.result.outcomes.append(Outcome(c.address, c.action, result, detail, c.from_version, c.to_version))
        self.history(c, result, detail)

    # --- the rollout -----------------------------------------------------------------------------
    def execute(self) -> ApplyResult:
        by_host: dict[str, list[Change]] = {}
        for c in self.plan.changes:
            by_host.setdefault(c.host, []).append(c)
        hosts = [h for h in self.run.spec.hosts if h in by_host]
        batch_size, max_failures = self._rollout(len(hosts))
        batches = [hosts[i:i + batch_size] for i in range(0, len(hosts), batch_size)]
        failures = 0
        for n, batch in enumerate(batches, 1):
            if len(batches) > 1:
                self.emit(EventKind.BATCH, message=f"batch {n}/{len(batches)}: {', '.join(batch)}")
            jobs = {h: gevent.spawn(self.apply_host, h, by_host[h]) for h in batch}
            gevent.joinall(list(jobs.values()))
            for h, job in jobs.items():
                ok = job.value if job.successful() else False
                if not job.successful():
                    self.emit(EventKind.FAIL, h, message=f"unexpected error: {job.exception}")
                if not ok:
                    failures += 1
            if failures > max_failures and n < len(batches):
                rest = [h for b in batches[n:] for h in b]
                self.result.stopped = (f"{failures} host(s) failed (max_failures {max_failures}); "
                                       f"not touched: {', '.join(rest)}")
                self.emit(EventKind.FAIL, message=f"rollout stopped: {self.result.stopped}")
                for h in rest:
                    for c in by_host[h]:
                        self.outcome(c, Result.SKIPPED, "rollout stopped")
                break
        return self.result

    def _rollout(self, n_hosts: int) -> tuple[int, int]:
        sizes, fails = [], []
        for svc in self.run.spec.services.values():
            b = svc.batch_size
            if isinstance(b, str) and b.endswith("%"):
                b = max(1, n_hosts * int(b[:-1]) // 100)
            sizes.append(int(b))
            fails.append(svc.max_failures)
        return (min(sizes) if sizes else 1), (min(fails) if fails else 0)

    def apply_host(self, host: str, changes: list[Change]) -> bool:
        desired = self.run.desired.get(host, {})
        waves: dict[int, list[Change]] = {}
        for c in changes:
            waves.setdefault(c.wave, []).append(c)
        ok = True
        for wave in sorted(waves):
            batch = waves[wave]
            if not ok:
                why = f"{host} became unreachable" if host in self.lost else "an earlier wave failed on this host"
                for c in batch:
                    self.outcome(c, Result.SKIPPED, why)
                    self.emit(EventKind.SKIP, host, c.service, f"not started: {why}", wave)
                continue
            deletes = [c for c in batch if c.action == Action.DELETE]
            others = [c for c in batch if c.action != Action.DELETE]
            if others:
                names = ", ".join(c.service for c in others)
                self.emit(EventKind.WAVE, host, message=f"wave {wave}: {names}", wave=wave)
                ok = self.apply_wave(host, wave, others, desired) and ok
            for c in deletes:
                if host in self.lost:
                    self.outcome(c, Result.SKIPPED, f"{host} became unreachable")
                    self.emit(EventKind.SKIP, host, c.service, f"not deleted: {host} became unreachable", wave)
                    ok = False
                    continue
                ok = self.delete(host, c) and ok
        return ok

    # --- one wave on one host --------------------------------------------------------------------
    def apply_wave(self, host: str, wave: int, changes: list[Change], desired: dict[str, DesiredService]) -> bool:
        failed: list[Change] = []
        ready: list[Change] = []
        for c in changes:
            d = desired[c.service]
            try:
                self.stage_files(host, c, d)
                ready.append(c)
            except Exception as exc:
                if self.connection_lost(host):
                    detail = self.lost_detail(host, c, "nothing was switched",
                                          f"release {d.version} is not complete on the host (it is not used)")
                else:
                    detail = self.staging_failed(host, c, d, exc)
                self.emit(EventKind.FAIL, host, c.service, detail, wave)
                self.outcome(c, Result.FAILED, detail)
                failed.append(c)
        if ready:
            try:
                self.activate(host, ready, desired)
            except Exception as exc:
                lost = self.connection_lost(host)
                for c in ready:
                    detail = self.lost_detail(
                        host, c, f"release {desired[c.service].version} uploaded; switching to it began (recorded "
                        "as in-progress)", "the switch may be incomplete; no restart, no health check"
                    ) if lost else f"switching failed: {_short(exc)}"
                    self.emit(EventKind.FAIL, host, c.service, detail, wave)
                    self.outcome(c, Result.FAILED, detail)
                return False
            results = self.bounce_and_check(host, ready, desired)
            lost = None if all(c.service in results for c in ready) else self.connection_lost(host)
            for c in ready:
                d = desired[c.service]
                good, detail = results.get(c.service, (False, "no result"))
                if lost and c.service not in results:
                    prev = c.from_version if c.from_version and c.from_version != d.version else None
                    detail = self.lost_detail(
                        host, c, f"release {d.version} installed and switched to, {d.unit_name} "
                        f"{'reloaded' if c.effect == Effect.RELOAD else 'restarted'} (recorded as in-progress)",
                        "the health check has no result" + (f", and no rollback to {prev} was tried" if prev and
                                                            self.auto_rollback else ""))
                    failed.append(c)
                    self.emit(EventKind.FAIL, host, c.service, detail, wave)
                    self.outcome(c, Result.FAILED, detail)
                    continue
                if good:
                    # an in-place change kept the release's earlier files beside it: `recon rollback` undoes it
                    self.record(d, RecordStatus.APPLIED, self._previous(host, c), in_place=c.action in _SAME_RELEASE)
                    self.prune(host, d)
                    self.emit(EventKind.OK, host, c.service, f"{_DONE[c.action]}{_ver(c)}, healthy ({detail})", wave)
                    self.outcome(c, _DONE[c.action], detail)
                else:
                    failed.append(c)
                    self.emit(EventKind.FAIL, host, c.service, f"health check failed: {detail}", wave)
                    self.handle_failure(host, c, d, detail, wave)
        return not failed

    def _kept(self, host: str, service: str) -> list[str]:
        """The releases observed under the service's releases/ dir before this run changed anything."""
        obs = self.run.observed.get(host)
        o = obs.services.get(service) if obs else None
        return list(o.releases) if o else []

    def _previous(self, host: str, c: Change) -> str | None:
        return previous_for(self.state.record(host, c.service), self.run.desired[host][c.service].version,
                            self._kept(host, c.service))

    def _dropins_to_remove(self, host: str, c: Change) -> list[str]:
        """The drop-in files the change lists (those `ignore_drift` covers are not in it)."""
        obs = self.run.observed.get(host)
        o = obs.services.get(c.service) if obs else None
        listed = {f.path for f in c.fields}
        return sorted(p for p in (o.dropins if o else {}) if dropin_field(p) in listed)

    def stage_files(self, host: str, c: Change, d: DesiredService) -> None:
        """Upload what the change needs into the release directory; nothing is switched yet."""
        self.emit(EventKind.STEP, host, c.service, f"{c.action}: preparing release {d.version}", c.wave)
        needs_files = c.action in (*_NEW_RELEASE, *_SAME_RELEASE)
        self.ensure(host, d)
        if not needs_files:
            return
        release_bin = d.binary_path
        if c.action in _NEW_RELEASE or any(f.part == Part.RELEASE for f in c.fields):
            # files.put creates the release directory; the sha256 is checked on the host before switching
            self.op(host, files.put, src=io.BytesIO(self._artifact(d)), dest=release_bin, mode="755")
        cfg_in_release = f"{d.release_dir}/{d.service}.toml"
        unit_in_release = f"{d.release_dir}/{d.unit_name}"
        if c.action in _SAME_RELEASE:
            # same release: keep what was there so an automatic rollback can put it back
            # (umask 077 and no old copy to write into: the env file's copy is never readable by others)
            self.sh(host, "umask 077 ; " + " ; ".join(
                f"rm -f {shlex.quote(p + '.prev')} ; [ -f {shlex.quote(p)} ] && cp -p {shlex.quote(p)} "
                f"{shlex.quote(p + '.prev')}" for p in (cfg_in_release, unit_in_release, d.env_path)) + " ; true")
        self.op(host, files.put, src=io.BytesIO(d.config_text.encode()), dest=cfg_in_release,
                user="root", group=d.group, mode="640")
        self.op(host, files.put, src=io.BytesIO(d.unit_text.encode()), dest=unit_in_release, mode="644")
        if d.secret_names:
            self.write_secrets(host, d)

    def write_secrets(self, host: str, d: DesiredService) -> None:
        """The env file, 0600 and root's from its first byte: `mktemp` creates a 0600 file in the same
        directory, the content arrives on stdin (never on a command line, which `ps` shows everyone),
        and a rename puts it in place. pyinfra's files.put wrote it with the default mode, then chmodded."""
        q = shlex.quote
        env = Path(d.env_path)
        script = "\n".join([
            "set -e", "umask 077",
            f"tmp=$(mktemp {q(str(env.parent / ('.' + env.name + '.recon-XXXXXX')))})",
            "trap 'rm -f \"$tmp\"' EXIT",
            'base64 -d > "$tmp"',
            'chown root:root "$tmp"',
            'chmod 600 "$tmp"',
            f'mv -f "$tmp" {q(d.env_path)}',
            "trap - EXIT",
        ])
        ok, out = self.sh(host, script, stdin=base64.encodebytes(d.secrets_text.encode()).decode())
        if not ok:
            raise ReconError(f"writing {d.env_path} failed: {out or 'no output'}")

    def staging_failed(self, host: str, c: Change, d: DesiredService, exc: BaseException) -> str:
        """After a failed upload: remove a release this apply created (never leave a partial one), and
        say why it failed when the host has no space left for it. Nothing was switched yet."""
        obs = self.run.observed.get(host)
        o = obs.services.get(d.service) if obs else None
        # a release this apply started: not on the host before, or there without the right binary (a
        # partial upload of an earlier run); never the live one
        new_release = c.action in _NEW_RELEASE and (o is None or (
            d.version != o.current and (d.version not in o.releases or o.want_binary_sha != d.sha256)))
        q = shlex.quote
        script = (f"rm -rf -- {q(d.release_dir)}\n" if new_release else "") + (
            f"p={q(d.release_dir)}; while [ ! -d \"$p\" ] && [ \"$p\" != / ]; do p=$(dirname \"$p\"); done\n"
            'df -Pk -- "$p" | tail -n 1')
        ok, out = self.sh(host, script)
        removed = f"; the partial release {d.release_dir} was removed" if new_release and ok else ""
        need = len(self.artifacts.get(d.service + d.version, b"")) if c.action in _NEW_RELEASE else 0
        need += len(d.config_text) + len(d.unit_text) + (len(d.secrets_text) if d.secret_names else 0)
        fields = out.split()
        avail = int(fields[3]) * 1024 if ok and len(fields) >= 6 and fields[3].isdigit() else None
        if avail is not None and avail < need + 4096:  # a little for the directory entries
            mount = " ".join(fields[5:])
            before = (f"{d.service} was not installed" if c.action == Action.CREATE else
                      f"{d.service} still runs {o.current}" if o and o.current else f"{d.service} is as it was")
            return (f"no space left on {host} at {d.release_dir}: {avail // 1024} KiB free on {mount}, release "
                    f"{d.version} needs {-(-need // 1024)} KiB{removed}. Nothing was switched: {before}. Free "
                    f"space on {mount} on {host}, then run `recon apply` again")
        return f"preparing the release failed: {_short(exc)}{removed}; nothing was switched"

    def _artifact(self, d: DesiredService) -> bytes:
        if d.service + d.version not in self.artifacts:
            svc = self.run.spec.services[d.service]
            self.artifacts[d.service + d.version] = load_artifact(d, svc.artifact_path, svc.artifact_url)
        return self.artifacts[d.service + d.version]

    def activate(self, host: str, changes: list[Change], desired: dict[str, DesiredService]) -> None:
        """Record intent, switch `current` atomically, install units, one daemon-reload."""
        for c in changes:
            d = desired[c.service]
            self.fallback[(host, c.service)] = rollback_target(self.state.record(host, c.service),
                                                               self._kept(host, c.service))
            self.record(d, RecordStatus.IN_PROGRESS, self._previous(host, c))
        parts = []
        for c in changes:
            d = desired[c.service]
            q = shlex.quote
            dropins = self._dropins_to_remove(host, c)
            if dropins:
                parts.append(f"rm -f -- {' '.join(q(p) for p in dropins)}")
            parts.append(
                f"echo {q(d.sha256 + '  ' + d.binary_path)} | sha256sum -c --quiet - || "
                f"{{ echo 'the artifact on the host does not match sha256 {d.sha256}' >&2; exit 4; }}; "
                f"ln -sfn releases/{q(d.version)} {q(d.service_dir)}/.current.tmp && "
                f"mv -Tf {q(d.service_dir)}/.current.tmp {q(d.service_dir)}/current && "
                f"ln -sfn {q(d.service_dir + '/current/' + d.service + '.toml')} {q(d.config_path)} && "
                f"cp {q(d.release_dir + '/' + d.unit_name)} {q(d.unit_path + '.recon-tmp')} && "
                f"mv -f {q(d.unit_path + '.recon-tmp')} {q(d.unit_path)} && "
                f"rm -rf /etc/systemd/system.control/{q(d.unit_name)}.d /run/systemd/system.control/{q(d.unit_name)}.d"
            )
        ok, out = self.sh(host, "set -e\n" + "\n".join(parts))
        if not ok:
            raise ReconError(out or "switching releases failed")
        self.op(host, systemd.daemon_reload)

    def bounce_and_check(self, host: str, changes: list[Change], desired: dict[str, DesiredService]
                         ) -> dict[str, tuple[bool, str]]:
        """Start/restart/reload the wave's services and wait for their health, in one command."""
        q = shlex.quote
        enable = [desired[c.service].unit_name for c in changes]
        restart = [desired[c.service].unit_name for c in changes if c.effect in (Effect.START, Effect.RESTART)]
        reload = [desired[c.service].unit_name for c in changes if c.effect == Effect.RELOAD]
        lines = [_HEALTH_FN, f"systemctl enable -q {' '.join(q(u) for u in enable)} 2>&1 || true"]
        if restart:
            lines.append(f"systemctl restart {JOB_MODE} {' '.join(q(u) for u in restart)} 2>/dev/null || true")
        if reload:
            lines.append(f"systemctl reload {' '.join(q(u) for u in reload)} 2>/dev/null || true")
        for c in changes:
            d = desired[c.service]
            lines.append(_check_line(d) + " &")
        lines.append("wait")
        timeout = int(max(desired[c.service].health_timeout_s for c in changes)) + 60
        waves = {c.service: c.wave for c in changes}

        def progress(line: str) -> None:   # a failed probe while the gate waits: PROBE name code elapsed timeout
            parts = line.split("\t")
            if len(parts) == 5 and parts[0] == "PROBE" and parts[1] in waves:
                answer = "no answer" if parts[2] in ("", "000") else f"HTTP {parts[2]}"
                self.emit(EventKind.WAIT, host, parts[1], f"waiting for health: {answer} ({parts[3]}s of {parts[4]}s)",
                          waves[parts[1]])

        res = self.session.stream(host, "\n".join(lines), progress, timeout=timeout)
        if res.lost:
            self.lost.setdefault(host, res.stderr)
        return _parse_results(res.stdout)

    # --- failure handling ------------------------------------------------------------------------
    def handle_failure(self, host: str, c: Change, d: DesiredService, detail: str, wave: int) -> None:
        if not self.auto_rollback:
            self.set_status(host, c.service, RecordStatus.FAILED)
            self.outcome(c, Result.FAILED, detail)
            return
        q = shlex.quote
        prev = self.fallback.get((host, c.service))
        if prev is None:
            self.sh(host, f"systemctl disable -q --now {q(d.unit_name)} 2>/dev/null; true")
            self.set_status(host, c.service, RecordStatus.FAILED)
            self.emit(EventKind.ROLLBACK, host, c.service, "no earlier release recorded healthy: stopped it", wave)
            self.outcome(c, Result.FAILED, f"{detail}; no earlier release recorded healthy, service stopped")
            return
        if prev == d.version and c.action not in _SAME_RELEASE:
            # nothing was changed but the process: the release that failed is the last one recorded healthy
            self.set_status(host, c.service, RecordStatus.FAILED)
            self.emit(EventKind.FAIL, host, c.service, f"{prev} is the last release recorded healthy; left as it is",
                      wave)
            self.outcome(c, Result.FAILED, f"{detail}; {prev} is the last release recorded healthy, nothing to roll "
                                      "back to")
            return
        self.emit(EventKind.ROLLBACK, host, c.service, f"rolling back to {prev}", wave)
        if prev != d.version:
            script = _switch_script(d.service_dir, d.service, prev, d.unit_name, d.unit_path, d.config_path)
        else:   # same release: put back the files kept beside it
            script = _restore_script(d, ".prev")
        ok, out = self.sh(host, "set -e\n" + script)
        if ok:
            verb = "reload" if c.action == Action.RELOAD else f"restart {JOB_MODE}"
            check = _HEALTH_FN + f"\nsystemctl {verb} {q(d.unit_name)} 2>/dev/null || true\n" + _check_line(d)
            _, out2 = self.sh(host, check, timeout=int(d.health_timeout_s) + 60)
            good, detail2 = _parse_results(out2).get(d.service, (False, "no result"))
        else:
            good, detail2 = False, out
        if good:
            rec = self.state.record(host, c.service)
            if rec is not None:
                old_unit = self._read_text(host, d.unit_path)
                old_cfg = self._read_text(host, d.config_path)
                self.set_status(host, c.service, RecordStatus.ROLLED_BACK, version=prev,
                                sha256=self._binary_sha(host, d.service_dir, prev, d.service),
                                unit_text=old_unit, unit_sha=sha256_text(old_unit),
                                config_text=old_cfg, config_sha=sha256_text(old_cfg),
                                env_hash=self._env_hash(host, d), in_place=False,
                                previous_version=None if prev != d.version else rec.previous_version)
            self.emit(EventKind.ROLLBACK, host, c.service, f"back on {prev}, healthy ({detail2})", wave)
            self.outcome(c, Result.ROLLED_BACK, f"{detail}; rolled back to {prev}")
        elif self.connection_lost(host):
            self.set_status(host, c.service, RecordStatus.FAILED)
            text = self.lost_detail(host, c, f"release {d.version} failed its health check ({detail}); the rollback "
                                    f"to {prev} began", f"the rollback to {prev} may be incomplete, its health is "
                                    "unknown")
            self.emit(EventKind.FAIL, host, c.service, text, wave)
            self.outcome(c, Result.FAILED, text)
        else:
            self.set_status(host, c.service, RecordStatus.FAILED)
            self.emit(EventKind.FAIL, host, c.service, f"rollback to {prev} failed: {detail2}", wave)
            self.outcome(c, Result.FAILED, f"{detail}; rollback to {prev} failed: {detail2}")

    def _binary_sha(self, host: str, service_dir: str, version: str, service: str) -> str:
        res = self.session.run(host, f"sha256sum {shlex.quote(f'{service_dir}/releases/{version}/{service}')}")
        return res.stdout.split()[0] if res.ok and res.stdout.strip() else ""

    def _env_hash(self, host: str, d: DesiredService) -> str | None:
        """The salted fingerprint of the env file on the host, as the observation computes it (None: no file)."""
        q = shlex.quote
        res = self.session.run(host, f"[ -f {q(d.env_path)} ] || exit 0; "
                                     f"{{ printf '%s\\000' {q(self.run.salt)}; cat {q(d.env_path)}; }} | sha256sum")
        return res.stdout.split()[0] if res.ok and res.stdout.strip() else None

    def _read_text(self, host: str, path: str) -> str:
        res = self.session.run(host, f"cat {shlex.quote(path)}")
        return res.stdout + "\n" if res.ok and not res.stdout.endswith("\n") else res.stdout

    # --- recon rollback --------------------------------------------------------------------------
    def rollback(self, changes: list[Change]) -> ApplyResult:
        """Switch each host's service to a kept release (binary, config and unit together)."""
        jobs = {c.host: gevent.spawn(self._undo_in_place if c.from_version == c.to_version else self._rollback_one, c)
                for c in changes}
        gevent.joinall(list(jobs.values()))
        for c in changes:
            job = jobs[c.host]
            if not job.successful():
                self.emit(EventKind.FAIL, c.host, c.service, f"unexpected error: {job.exception}")
                self.outcome(c, Result.FAILED, str(job.exception))
        return self.result

    def _undo_in_place(self, c: Change) -> None:
        """Undo the last in-place apply of the running release (a config, unit or secrets change): put back
        the files kept beside it (`*.prev`), then restart (or reload), health-gated; when the files put back
        are not healthy, the ones of the last apply return."""
        d = self.run.desired[c.host][c.service]
        version = c.from_version or d.version
        q = shlex.quote
        self.emit(EventKind.ROLLBACK, c.host, c.service, f"putting back the files {version} had before the last apply")
        ok, out = self.sh(c.host, "set -e\n" + _restore_script(d, ".prev", keep=".undo"))
        good, detail = False, out
        verb = "reload" if c.effect == Effect.RELOAD else f"restart {JOB_MODE}"
        if ok:
            _, out2 = self.sh(c.host, _HEALTH_FN + f"\nsystemctl {verb} {q(d.unit_name)} 2>/dev/null || true\n"
                              + _check_line(d), timeout=int(d.health_timeout_s) + 60)
            good, detail = _parse_results(out2).get(d.service, (False, "no result"))
        if good:
            unit, cfg = self._read_text(c.host, d.unit_path), self._read_text(c.host, d.config_path)
            self.sh(c.host, _drop_script(d, ".undo"))
            self.set_status(c.host, c.service, RecordStatus.APPLIED, unit_text=unit, unit_sha=sha256_text(unit),
                            config_text=cfg, config_sha=sha256_text(cfg), env_hash=self._env_hash(c.host, d),
                            in_place=False)
            self.emit(EventKind.OK, c.host, c.service, f"rolled back to {version} as it was before the last apply, "
                                                       f"healthy ({detail})")
            self.outcome(c, Result.REPLACED, f"rollback of the last apply: {detail}")
            return
        if ok:   # the files put back are not healthy: the last apply's files return
            self.emit(EventKind.FAIL, c.host, c.service, f"not healthy with the earlier files ({detail}); putting "
                                                         "back the last apply's")
            self.sh(c.host, "set -e\n" + _restore_script(d, ".undo", keep=".prev")
                    + f"\nsystemctl {verb} {q(d.unit_name)} 2>/dev/null || true")
        self.outcome(c, Result.FAILED, f"rollback of the last apply failed: {detail}")

    def _rollback_one(self, c: Change) -> None:
        d = self.run.desired[c.host][c.service]
        target, current = c.to_version or "", c.from_version or ""
        self.emit(EventKind.ROLLBACK, c.host, c.service, f"switching {current} → {target}")
        q = shlex.quote
        ok, out = self.sh(c.host, "set -e\n" + _switch_script(d.service_dir, d.service, target, d.unit_name,
                                                              d.unit_path, d.config_path))
        good, detail = False, out
        if ok:
            _, out2 = self.sh(c.host, _HEALTH_FN + f"\nsystemctl restart {JOB_MODE} {q(d.unit_name)} 2>/dev/null "
                              "|| true\n" + _check_line(d), timeout=int(d.health_timeout_s) + 60)
            good, detail = _parse_results(out2).get(d.service, (False, "no result"))
        unit = self._read_text(c.host, d.unit_path)
        cfg = self._read_text(c.host, d.config_path)
        if good:
            with self.lock:
                rec = self.state.record(c.host, c.service)
                fields = {"version": target, "unit_text": unit, "unit_sha": sha256_text(unit), "config_text": cfg,
                          "config_sha": sha256_text(cfg),
                          "previous_version": previous_for(rec, target, self._kept(c.host, c.service)),
                          "sha256": self._binary_sha(c.host, d.service_dir, target, d.service)}
                if rec is None:
                    self.record(d, RecordStatus.APPLIED, None, version=target)
                self.set_status(c.host, c.service, RecordStatus.APPLIED, **fields)
            self.emit(EventKind.OK, c.host, c.service, f"rolled back to {target}, healthy ({detail})")
            self.outcome(c, Result.REPLACED, f"rollback to {target}: {detail}")
            return
        self.emit(EventKind.FAIL, c.host, c.service, f"{target} is not healthy ({detail}); switching back to {current}")
        self.sh(c.host, "set -e\n" + _switch_script(d.service_dir, d.service, current, d.unit_name, d.unit_path,
                                                    d.config_path)
                + f"\nsystemctl restart {JOB_MODE} {q(d.unit_name)}")
        self.outcome(c, Result.FAILED, f"{target} failed its health check ({detail}); back on {current}")

    # --- delete and prune ------------------------------------------------------------------------
    def delete(self, host: str, c: Change) -> bool:
        rec = self.state.record(host, c.service)
        if rec is None:
            return True
        problem = ownership.record_problem(c.service, rec)
        if problem:   # a hand-edited state: nothing is touched on the host
            out = f"refused: {problem}"
            self.emit(EventKind.FAIL, host, c.service, f"delete failed: {out}", c.wave)
            self.outcome(c, Result.FAILED, out)
            return False
        owned = self.state.owned.get(host, [])
        unused = [o.name for o in owned if o.kind == "dir" and o.role == "shared" and o.services in ([], [c.service])]
        ok, out = self.sh(host, ownership.delete_script(c.service, rec, unused))
        if ok:
            removed = {name for _, name in ownership.parse_marks(out, "REMOVED")}
            kept = [name for _, name in ownership.parse_marks(out, "KEPT")]
            self.forget(host, c.service, removed)
            note = "; kept " + ", ".join(kept) + " (not recon's alone)" if kept else ""
            self.emit(EventKind.OK, host, c.service, f"deleted (its data directory is kept{note})", c.wave)
            self.outcome(c, Result.DELETED, note.lstrip("; "))
            return True
        self.emit(EventKind.FAIL, host, c.service, f"delete failed: {out}", c.wave)
        self.outcome(c, Result.FAILED, out)
        return False

    def prune(self, host: str, d: DesiredService) -> None:
        """Keep `keep_releases` newest plus the running and the previous release."""
        rec = self.state.record(host, d.service)
        keep = {d.version} | ({rec.previous_version} if rec and rec.previous_version else set())
        self.sh(host, ownership.prune_script(d.service_dir, keep, d.keep_releases))


class _OpErrors(logging.Handler):
    """Keeps pyinfra's error lines per host, so a failed operation says why."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("[") and "]" in msg:
            host, text = msg[1:].split("]", 1)
            text = text.strip()
            if not text.startswith("Error: executed"):
                self.lines.setdefault(host, []).append(text)

    def last(self, host: str) -> str | None:
        lines = self.lines.get(host)
        return lines[-1] if lines else None


# --- host-side scripts -----------------------------------------------------------------------------
_HEALTH_FN = r"""check() {
  n=$1; u=$2; url=$3; t=$4; iv=$5; want=$6
  start=$(date +%s); end=$((start + t))
  while :; do
    if ! systemctl is-active -q "$u"; then
      st=$(systemctl show -p ActiveState,SubState,Result --value "$u" | tr '\n' ' ')
      echo "RESULT	$n	fail	unit is ${st% }"; return
    fi
    if [ -z "$url" ]; then echo "RESULT	$n	ok	active"; return; fi
    code=$(curl -q -g -s --noproxy '*' -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null)
    now=$(date +%s)
    if [ "$code" = "$want" ]; then echo "RESULT	$n	ok	HTTP $code after $((now - start))s"; return; fi
    if [ "$now" -ge "$end" ]; then echo "RESULT	$n	fail	HTTP ${code:-no answer} after ${t}s"; return; fi
    [ "$now" != "${said:-}" ] && said=$now && echo "PROBE	$n	${code:-000}	$((now - start))	$t"
    sleep "$iv"
  done
}"""


def _check_line(d: DesiredService) -> str:
    q = shlex.quote
    return (f"check {q(d.service)} {q(d.unit_name)} {q(d.health_url or '')} {int(max(1, d.health_timeout_s))} "
            f"{d.health_interval_s:g} {d.health_status}")


def _parse_results(out: str) -> dict[str, tuple[bool, str]]:
    res: dict[str, tuple[bool, str]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0] == "RESULT":
            res[parts[1]] = (parts[2] == "ok", parts[3])
    return res


def _restore_script(d: DesiredService, suffix: str, keep: str | None = None) -> str:
    """Put back the files kept beside the running release under `suffix` (its config, unit and env file as
    they were before the last in-place apply) and install its unit; with `keep`, the files they replace are
    kept under that suffix. Exits 3 when nothing is kept. The env file stays 0600 throughout."""
    q = shlex.quote
    rel = d.release_dir
    files = " ".join(q(p) for p in (f"{rel}/{d.service}.toml", f"{rel}/{d.unit_name}", d.env_path))
    save = f'[ -f "$f" ] && cp -p "$f" "$f{keep}"; ' if keep else ""
    return "\n".join([
        "umask 077; n=0",
        f"for f in {files}; do",
        f'  if [ -f "$f{suffix}" ]; then {save}mv -f "$f{suffix}" "$f"; n=$((n + 1)); fi',
        "done",
        '[ "$n" -gt 0 ] || { echo "no earlier files are kept beside the running release" >&2; exit 3; }',
        f"cp {q(rel + '/' + d.unit_name)} {q(d.unit_path)}.recon-tmp && mv -f {q(d.unit_path)}.recon-tmp "
        f"{q(d.unit_path)}",
        "systemctl daemon-reload",
    ])


def _drop_script(d: DesiredService, suffix: str) -> str:
    q = shlex.quote
    rel = d.release_dir
    return " ".join(["rm -f", *(q(p + suffix) for p in (f"{rel}/{d.service}.toml", f"{rel}/{d.unit_name}",
                                                         d.env_path))])


def _switch_script(service_dir: str, service: str, version: str, unit_name: str, unit_path: str,
                   config_path: str) -> str:
    """Point `current` at a kept release and put its unit back (binary, config and unit together)."""
    q = shlex.quote
    rel = f"{service_dir}/releases/{version}"
    return "\n".join([
        f"[ -d {q(rel)} ] || {{ echo 'release {version} is not on the host' >&2; exit 3; }}",
        f"ln -sfn releases/{q(version)} {q(service_dir)}/.current.tmp",
        f"mv -Tf {q(service_dir)}/.current.tmp {q(service_dir)}/current",
        f"ln -sfn {q(service_dir + '/current/' + service + '.toml')} {q(config_path)}",
        f"cp {q(rel + '/' + unit_name)} {q(unit_path)}.recon-tmp && mv -f {q(unit_path)}.recon-tmp {q(unit_path)}",
        "systemctl daemon-reload",
    ])


def _ver(c: Change) -> str:
    if c.action == Action.REPLACE and c.from_version and c.to_version:
        return f" {c.from_version} → {c.to_version}"
    if c.action == Action.CREATE and c.to_version:
        return f" {c.to_version}"
    return ""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:300]
