"""Apply a plan with pyinfra: releases, configs, units, dependency waves, health gates, automatic
rollback, rolling host batches, and step-by-step state records so a crash at any point converges.

This module is the orchestration (batches, waves, gates); the shell text it runs on hosts comes from
`hostscripts`, and every state record and history line is written through `recorder`. Output is not
formatted here: every step is reported through an `on_event(Event)` callback.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
import gevent.lock

from reconciler import external, ownership
from reconciler import hostscripts as hs
from reconciler import operations as ops
from reconciler.archive import load_archive
from reconciler.desired import DesiredService, logrotate_text, sha256_text
from reconciler.errors import ReconError
from reconciler.outcome import ApplyResult, Event, EventKind, Outcome, Phase, PhaseTime, Result
from reconciler.plan import Action, Change, Effect, Part, Plan, dropin_field
from reconciler.recorder import Recorder, last_healthy, previous_for, record_of, rollback_target
from reconciler.state import RecordStatus, State

if TYPE_CHECKING:
    from reconciler.pipeline import Run
    from reconciler.transport import Session

__all__ = ["Applier", "last_healthy", "load_artifact", "previous_for", "record_of", "rollback_target"]


_DONE = {Action.CREATE: Result.CREATED, Action.UPDATE: Result.UPDATED, Action.REPLACE: Result.REPLACED,
         Action.RESTART: Result.RESTARTED, Action.RELOAD: Result.RELOADED, Action.DELETE: Result.DELETED}
_NEW_RELEASE = (Action.CREATE, Action.REPLACE)          # a new release directory
_SAME_RELEASE = (Action.UPDATE, Action.RELOAD)          # files of the running release change in place


def load_artifact(d: DesiredService, path: Path | None, url: str | None) -> bytes:
    """The artifact's bytes (a binary or an archive), read or downloaded once per run and checked against the
    spec's sha256 before anything is uploaded."""
    return load_archive(path, url, d.archive_sha256 or d.sha256, d.service)


class Applier:
    """Carries out one plan: host batches, waves and health gates, rollbacks. `session` is an open
    `transport.Session` (its pyinfra State is reused); the shell text comes from `hostscripts`, and every
    record and history line is written through `recorder`."""

    def __init__(self, run: Run, plan: Plan, session: Session, on_event: Callable[[Event], None],
                 command: str = "apply", auto_rollback: bool = True) -> None:
        self.run = run
        self.plan = plan
        self.session = session
        self.on_event = on_event
        self.command = command
        self.auto_rollback = auto_rollback
        self.state: State = run.state
        self.recorder = Recorder(run.store, run.state, run.salt, command, lock=gevent.lock.RLock())
        self.result = ApplyResult()
        self.artifacts: dict[str, bytes] = {}
        self.fallback: dict[tuple[str, str], str | None] = {}   # (host, service) -> release to go back to
        self.lost: dict[str, str] = {}   # hosts whose connection went away mid-apply, and the error
        self.externals_seen: dict[tuple[str, str], external.ExternalHealth] = {}   # (host, name): probed once

    # --- commands -------------------------------------------------------------------------------
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

    # --- state (written through the recorder) ---------------------------------------------------
    def outcome(self, c: Change, result: Result, detail: str = "") -> None:
        with self.recorder.lock:
            self.result.outcomes.append(Outcome(c.address, c.action, result, detail, c.from_version, c.to_version))
        self.recorder.history(c, result, detail)

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
        if self.recorder.lost:
            self.result.stopped = f"the state's store was lost: {self.recorder.lost}"
            self.emit(EventKind.FAIL, message=f"apply stopped: {self.result.stopped}")
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
        files = [c for c in changes if not c.service]       # host-wide files: after the services' waves
        ok = self.apply_services(host, [c for c in changes if c.service])
        for c in files:
            if host in self.lost:
                self.outcome(c, Result.SKIPPED, f"{host} became unreachable")
                self.emit(EventKind.SKIP, host, c.address, f"not written: {host} became unreachable", c.wave)
                ok = False
                continue
            ok = self.write_host_file(host, c) and ok
        return ok

    def write_host_file(self, host: str, c: Change) -> bool:
        """Write or remove the logrotate file of `logs:` (a change without a service), and record it."""
        path = c.address.split(":", 1)[1]
        desired = self.run.desired.get(host, {})
        text = logrotate_text(desired) if c.action != Action.DELETE else None
        if c.action != Action.DELETE and text is None:      # cannot happen: the plan came from this spec
            self.outcome(c, Result.FAILED, "no service on the host has `logs:`")
            return False
        ok, out = (self.sh(host, hs.host_file_script(path), stdin=text) if text is not None
                   else self.sh(host, hs.remove_file_script(path)))
        if not ok:
            detail = f"writing {path} failed: {out or 'no output'}" if text is not None else \
                f"removing {path} failed: {out or 'no output'}"
            self.emit(EventKind.FAIL, host, "", detail, c.wave)
            self.outcome(c, Result.FAILED, detail)
            return False
        self.recorder.wrote_file(host, path, "logrotate", text,
                                 [n for n, d in desired.items() if d.logs is not None])
        self.emit(EventKind.OK, host, "", f"{path} {'removed' if text is None else 'written'}", c.wave)
        self.outcome(c, _DONE[c.action])
        return True

    def apply_services(self, host: str, changes: list[Change]) -> bool:
        desired = self.run.desired.get(host, {})
        waves: dict[int, list[Change]] = {}
        for c in changes:
            waves.setdefault(c.wave, []).append(c)
        ok = True
        for wave in sorted(waves):
            batch = waves[wave]
            if ok and not self.recorder.alive():
                ok = False                 # the state's store went away: no new wave starts (issue 11)
            if not ok:
                why = f"{host} became unreachable" if host in self.lost else "an earlier wave failed on this host"
                if self.recorder.lost:
                    why = "the state's store was lost"
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

    # --- one wave on one host: three commands (reconciler.operations) ------------------------------
    def apply_wave(self, host: str, wave: int, changes: list[Change], desired: dict[str, DesiredService]) -> bool:
        """Upload the wave's files in one tar, place and switch them in one command, then start the services
        and wait for their health in one more (`operations.upload_wave`, `place_wave`, `start_wave`)."""
        failed: list[Change] = self.refuse_for_externals(host, wave, changes)
        items: list[tuple[Change, ops.WaveItem]] = []
        for c in changes:
            if c in failed:
                continue
            d = desired[c.service]
            self.emit(EventKind.STEP, host, c.service, f"{c.action}: preparing release {d.version}", c.wave)
            try:
                items.append((c, self.wave_item(host, c, d)))
            except ReconError as exc:      # the artifact cannot be read or does not match: nothing was sent
                detail = f"preparing the release failed: {exc}; nothing was switched"
                self.emit(EventKind.FAIL, host, c.service, detail, wave)
                self.outcome(c, Result.FAILED, detail)
                failed.append(c)
        if not items:
            return not failed
        switched = self.place(host, wave, items)
        ready = [(c, it) for c, it in items if c.service in switched]
        failed += [c for c, _ in items if c.service not in switched]
        if not ready:
            return False
        results = self.start(host, wave, [it for _, it in ready])
        lost = None if all(c.service in results for c, _ in ready) else self.connection_lost(host)
        for c, _ in ready:
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
                self.recorder.record(d, RecordStatus.APPLIED, self._previous(host, c),
                                     in_place=c.action in _SAME_RELEASE)
                self.emit(EventKind.OK, host, c.service, f"{_DONE[c.action]}{_ver(c)}, healthy ({detail})", wave)
                self.outcome(c, _DONE[c.action], detail)
            else:
                failed.append(c)
                self.emit(EventKind.FAIL, host, c.service, f"health check failed: {detail}", wave)
                self.handle_failure(host, c, d, detail, wave)
        return not failed

    def wave_item(self, host: str, c: Change, d: DesiredService) -> ops.WaveItem:
        """What the wave does with one change's service (`operations.WaveItem`), from the plan and the observation."""
        files = c.action in (*_NEW_RELEASE, *_SAME_RELEASE)
        release = files and (c.action in _NEW_RELEASE or any(f.part == Part.RELEASE for f in c.fields))
        obs = self.run.observed.get(host)
        o = obs.services.get(d.service) if obs else None
        # a release this apply starts: not on the host before, or there without the right artifact (a partial
        # upload of an earlier run); never the live one. Removed again when staging it fails.
        new_release = c.action in _NEW_RELEASE and (o is None or (
            d.version != o.current and (d.version not in o.releases or o.want_binary_sha != d.sha256)))
        keep = {d.version} | ({p} if (p := self._previous(host, c)) else set())
        releases = set(o.releases if o else ()) | {d.version}     # what the host keeps once this wave placed it
        return ops.WaveItem(d, c.effect, release=release, files=files, in_place=c.action in _SAME_RELEASE,
                            new_release=new_release, mine=frozenset(self.recorder.mine(host, d.service)),
                            dropins=tuple(self._dropins_to_remove(host, c)), keep=frozenset(keep),
                            prune=len(releases) > d.keep_releases, artifact=self._artifact(d) if release else b"")

    def place(self, host: str, wave: int, items: list[tuple[Change, ops.WaveItem]]) -> set[str]:
        """Upload and place the wave's files, then switch (records written before anything is switched).
        Returns the services switched; every other one has its outcome (failed, and why)."""
        token = uuid.uuid4().hex[:16]
        members = ops.upload_members([it for _, it in items])
        if members:
            size = sum(len(m[1]) for m in members)
            self.emit(EventKind.STEP, host, message=f"uploading {len(members)} files ({-(-size // 1024)} KiB)",
                      wave=wave)
            t0 = time.monotonic()
            up = self.session.execute(host, ops.upload_wave._inner(members, token))
            self.timed(host, wave, Phase.UPLOAD, t0)
            if not up.ok:
                for c, it in items:
                    detail = (self.lost_detail(host, c, "nothing was switched", f"release {it.d.version} was not "
                                               "uploaded") if self.connection_lost(host) else
                              f"uploading the release failed: {_short_text(up.stderr)}; nothing was switched")
                    self.emit(EventKind.FAIL, host, c.service, detail, wave)
                    self.outcome(c, Result.FAILED, detail)
                return set()
        before = {c.service: self.state.record(host, c.service) for c, _ in items}
        for c, it in items:
            self.fallback[(host, c.service)] = rollback_target(before[c.service], self._kept(host, c.service))
            self.recorder.record(it.d, RecordStatus.IN_PROGRESS, self._previous(host, c))
        t0 = time.monotonic()
        res = self.session.execute(host, ops.place_wave._inner([it for _, it in items], token, members),
                                   stdin=ops.secrets_stdin([it for _, it in items]))
        self.timed(host, wave, Phase.SWITCH, t0)
        if res.lost:
            self.lost.setdefault(host, res.stderr)
        placed = ops.parse_place(res.stdout + "\n" + res.stderr)
        for c, it in items:
            self.recorder.ensured(host, it.d, placed.created.get(c.service, []))
        switched = set(placed.switched) if placed.reloaded else set()
        for c, it in items:
            if c.service in switched:
                continue
            errors = "; ".join(placed.errors.get(c.service, [])) or _short_text(res.stderr) or "no output"
            if res.lost or (not res.ok and not placed.errors and self.connection_lost(host)):
                what = ("switching to it began (recorded as in-progress)" if c.service in placed.staged else
                        "nothing was switched")
                detail = self.lost_detail(host, c, f"release {it.d.version} uploaded; {what}",
                                          "the switch may be incomplete; no restart, no health check")
            elif c.service not in placed.staged:
                self.recorder.restore(host, c.service, before[c.service])   # nothing of it was switched
                detail = self.staging_failed(host, c, it, errors, placed.df.get(c.service, ""))
            elif c.service in placed.switched:
                detail = "switching failed: systemctl daemon-reload failed"
            else:
                detail = f"switching failed: {errors}"
            self.emit(EventKind.FAIL, host, c.service, detail, wave)
            self.outcome(c, Result.FAILED, detail)
        return switched

    def staging_failed(self, host: str, c: Change, it: ops.WaveItem, errors: str, df_line: str) -> str:
        """Why staging a service failed, saying so when the host has no space left for it (from the `df -Pk` of
        its release directory). A release this apply created was removed by the place command."""
        d = it.d
        removed = f"; the partial release {d.release_dir} was removed" if it.new_release else ""
        need = (len(it.artifact) if c.action in _NEW_RELEASE else 0) + len(d.config_text) + len(d.unit_text) + (
            len(d.secrets_text) if d.secret_names else 0)
        fields = df_line.split()
        avail = int(fields[3]) * 1024 if len(fields) >= 6 and fields[3].isdigit() else None
        if avail is not None and (avail < need + 4096 or "No space left" in errors):
            mount = " ".join(fields[5:])
            obs = self.run.observed.get(host)
            o = obs.services.get(d.service) if obs else None
            before = (f"{d.service} was not installed" if c.action == Action.CREATE else
                      f"{d.service} still runs {o.current}" if o and o.current else f"{d.service} is as it was")
            return (f"no space left on {host} at {d.release_dir}: {avail // 1024} KiB free on {mount}, release "
                    f"{d.version} needs {-(-need // 1024)} KiB{removed}. Nothing was switched: {before}. Free "
                    f"space on {mount} on {host}, then run `recon apply` again")
        if "refused: " in errors:
            return errors
        return f"preparing the release failed: {errors}{removed}; nothing was switched"

    def timed(self, host: str, wave: int, phase: Phase, since: float) -> float:
        """Keep how long a phase of a wave took on a host (`ApplyResult.phases`); returns now."""
        now = time.monotonic()
        with self.recorder.lock:
            self.result.phases.append(PhaseTime(host, wave, phase, now - since))
        return now

    def _artifact(self, d: DesiredService) -> bytes:
        if d.service + d.version not in self.artifacts:
            svc = self.run.spec.services[d.service]
            self.artifacts[d.service + d.version] = load_artifact(d, svc.artifact_path, svc.artifact_url)
        return self.artifacts[d.service + d.version]

    def start(self, host: str, wave: int, items: list[ops.WaveItem]) -> dict[str, tuple[bool, str]]:
        """Start/restart/reload the wave's services and wait for their health, in one command; the old
        releases of the healthy ones are pruned in it."""
        names = {it.d.service for it in items}

        t0 = time.monotonic()
        started = [t0]

        def progress(line: str) -> None:   # a failed probe while the gate waits: PROBE name code elapsed timeout
            if line == "STARTED":
                started[0] = self.timed(host, wave, Phase.START, t0)
                return
            parts = line.split("\t")
            if len(parts) == 5 and parts[0] == "PROBE" and parts[1] in names:
                answer = "no answer" if parts[2] in ("", "000") else f"HTTP {parts[2]}"
                self.emit(EventKind.WAIT, host, parts[1], f"waiting for health: {answer} ({parts[3]}s of {parts[4]}s)",
                          wave)

        res = self.session.execute(host, ops.start_wave._inner(items), on_line=progress,
                                   timeout=ops.timeout_of(items))
        self.timed(host, wave, Phase.HEALTH, started[0])
        if res.lost:
            self.lost.setdefault(host, res.stderr)
        return hs.parse_results(res.stdout)

    def refuse_for_externals(self, host: str, wave: int, changes: list[Change]) -> list[Change]:
        """Before a wave starts services that depend on externals: probe those externals from this host (once
        per host and apply), and refuse (fail, untouched) the changes whose externals are unhealthy."""
        spec = self.run.spec
        starting = [c for c in changes if c.effect in (Effect.START, Effect.RESTART)
                    and c.service in spec.services and spec.services[c.service].external_deps]
        if not starting:
            return []
        seen = self.externals_seen
        todo = [e for e in external.needed_on(host, [spec.services[c.service] for c in starting], spec.externals)
                if (host, e.name) not in seen]
        if todo:
            self.emit(EventKind.STEP, host, message="checking externals: " + ", ".join(e.name for e in todo),
                      wave=wave)
            _, out = self.sh(host, external.probe_script(todo, host), timeout=30)
            for name, h in external.parse_probe(out, todo, host).items():
                seen[(host, name)] = h
        refused = []
        for c in starting:
            bad = [seen[(host, x)] for x in spec.services[c.service].external_deps
                   if (host, x) in seen and not seen[(host, x)].ok]
            if bad:
                detail = external.refusal(c.service, bad)
                self.emit(EventKind.FAIL, host, c.service, detail, wave)
                self.outcome(c, Result.FAILED, detail)
                refused.append(c)
        return refused

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

    # --- failure handling ------------------------------------------------------------------------
    def handle_failure(self, host: str, c: Change, d: DesiredService, detail: str, wave: int) -> None:
        if not self.auto_rollback:
            self.recorder.set_status(host, c.service, RecordStatus.FAILED)
            self.outcome(c, Result.FAILED, detail)
            return
        prev = self.fallback.get((host, c.service))
        if prev is None:
            self.sh(host, hs.stop_script(d))
            self.recorder.set_status(host, c.service, RecordStatus.FAILED)
            self.emit(EventKind.ROLLBACK, host, c.service, "no earlier release recorded healthy: stopped it", wave)
            self.outcome(c, Result.FAILED, f"{detail}; no earlier release recorded healthy, service stopped")
            return
        if prev == d.version and c.action not in _SAME_RELEASE:
            # nothing was changed but the process: the release that failed is the last one recorded healthy
            self.recorder.set_status(host, c.service, RecordStatus.FAILED)
            self.emit(EventKind.FAIL, host, c.service, f"{prev} is the last release recorded healthy; left as it is",
                      wave)
            self.outcome(c, Result.FAILED, f"{detail}; {prev} is the last release recorded healthy, nothing to roll "
                                      "back to")
            return
        self.emit(EventKind.ROLLBACK, host, c.service, f"rolling back to {prev}", wave)
        same = prev == d.version   # same release: put back the files kept beside it
        effect = Effect.RELOAD if c.action == Action.RELOAD else Effect.RESTART
        _, good, detail2 = self._go_to(host, d, hs.restore_script(d, ".prev") if same else hs.switch_script(d, prev),
                                       effect)
        if good:
            rec = self.state.record(host, c.service)
            if rec is not None:
                self.recorder.set_status(host, c.service, RecordStatus.ROLLED_BACK, version=prev,
                                         **self._as_on_host(host, d, binary_of=prev, env=True), in_place=False,
                                         previous_version=rec.previous_version if same else None)
            self.emit(EventKind.ROLLBACK, host, c.service, f"back on {prev}, healthy ({detail2})", wave)
            self.outcome(c, Result.ROLLED_BACK, f"{detail}; rolled back to {prev}")
        elif self.connection_lost(host):
            self.recorder.set_status(host, c.service, RecordStatus.FAILED)
            text = self.lost_detail(host, c, f"release {d.version} failed its health check ({detail}); the rollback "
                                    f"to {prev} began", f"the rollback to {prev} may be incomplete, its health is "
                                    "unknown")
            self.emit(EventKind.FAIL, host, c.service, text, wave)
            self.outcome(c, Result.FAILED, text)
        else:
            self.recorder.set_status(host, c.service, RecordStatus.FAILED)
            self.emit(EventKind.FAIL, host, c.service, f"rollback to {prev} failed: {detail2}", wave)
            self.outcome(c, Result.FAILED, f"{detail}; rollback to {prev} failed: {detail2}")

    # --- going back: one path for the automatic rollback and `recon rollback` ----------------------
    def _go_to(self, host: str, d: DesiredService, script: str, effect: Effect) -> tuple[bool, bool, str]:
        """Run a switch or restore script (`set -e`); when it worked, restart (or reload) the unit and wait
        for its health. (switched, healthy, detail); detail is the script's output when it failed."""
        ok, out = self.sh(host, "set -e\n" + script)
        if not ok:
            return False, False, out
        _, out2 = self.sh(host, hs.bounce_script([(d, effect)]), timeout=hs.bounce_timeout([d]))
        good, detail = hs.parse_results(out2).get(d.service, (False, "no result"))
        return True, good, detail

    def _go_back(self, host: str, d: DesiredService, script: str, effect: Effect) -> None:
        """Undo a `_go_to` whose files proved unhealthy: the script that returns to them, and a restart (or
        reload), without a health gate (it is where the host was)."""
        self.sh(host, "\n".join(["set -e", script, *hs.bounce_lines(
            [d.unit_name] if effect != Effect.RELOAD else [], [d.unit_name] if effect == Effect.RELOAD else [])]))

    def _as_on_host(self, host: str, d: DesiredService, binary_of: str | None = None, env: bool = False
                    ) -> dict[str, Any]:
        """Record fields for the files the host runs now, read back: unit and config, the sha256 of the
        binary of release `binary_of`, and with `env` the env file's fingerprint."""
        unit, cfg = self._read_text(host, d.unit_path), self._read_text(host, d.config_path)
        fields: dict[str, Any] = {"unit_text": unit, "unit_sha": sha256_text(unit), "config_text": cfg,
                                  "config_sha": sha256_text(cfg)}
        if binary_of:
            fields["sha256"] = self._binary_sha(host, d, binary_of)
        if env:
            fields["env_hash"] = self._env_hash(host, d)
        return fields

    def _binary_sha(self, host: str, d: DesiredService, version: str) -> str:
        res = self.session.run(host, hs.binary_sha_script(d, version))
        return res.stdout.split()[0] if res.ok and res.stdout.strip() else ""

    def _env_hash(self, host: str, d: DesiredService) -> str | None:
        """The salted fingerprint of the env file on the host, as the observation computes it (None: no file)."""
        res = self.session.run(host, hs.env_hash_script(d.env_path, self.run.salt))
        return res.stdout.split()[0] if res.ok and res.stdout.strip() else None

    def _read_text(self, host: str, path: str) -> str:
        res = self.session.run(host, hs.read_script(path))
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
        self.emit(EventKind.ROLLBACK, c.host, c.service, f"putting back the files {version} had before the last apply")
        effect = Effect.RELOAD if c.effect == Effect.RELOAD else Effect.RESTART
        switched, good, detail = self._go_to(c.host, d, hs.restore_script(d, ".prev", keep=".undo"), effect)
        if good:
            fields = self._as_on_host(c.host, d, env=True)
            self.sh(c.host, hs.drop_script(d, ".undo"))
            self.recorder.set_status(c.host, c.service, RecordStatus.APPLIED, **fields, in_place=False)
            self.emit(EventKind.OK, c.host, c.service, f"rolled back to {version} as it was before the last apply, "
                                                       f"healthy ({detail})")
            self.outcome(c, Result.REPLACED, f"rollback of the last apply: {detail}")
            return
        if switched:   # the files put back are not healthy: the last apply's files return
            self.emit(EventKind.FAIL, c.host, c.service, f"not healthy with the earlier files ({detail}); putting "
                                                         "back the last apply's")
            self._go_back(c.host, d, hs.restore_script(d, ".undo", keep=".prev"), effect)
        self.outcome(c, Result.FAILED, f"rollback of the last apply failed: {detail}")

    def _rollback_one(self, c: Change) -> None:
        d = self.run.desired[c.host][c.service]
        target, current = c.to_version or "", c.from_version or ""
        self.emit(EventKind.ROLLBACK, c.host, c.service, f"switching {current} → {target}")
        _, good, detail = self._go_to(c.host, d, hs.switch_script(d, target), Effect.RESTART)
        if good:
            fields = {"version": target, **self._as_on_host(c.host, d, binary_of=target)}
            with self.recorder.lock:
                rec = self.state.record(c.host, c.service)
                fields["previous_version"] = previous_for(rec, target, self._kept(c.host, c.service))
                if rec is None:
                    self.recorder.record(d, RecordStatus.APPLIED, None, version=target)
                self.recorder.set_status(c.host, c.service, RecordStatus.APPLIED, **fields)
            self.emit(EventKind.OK, c.host, c.service, f"rolled back to {target}, healthy ({detail})")
            self.outcome(c, Result.REPLACED, f"rollback to {target}: {detail}")
            return
        self.emit(EventKind.FAIL, c.host, c.service, f"{target} is not healthy ({detail}); switching back to {current}")
        self._go_back(c.host, d, hs.switch_script(d, current), Effect.RESTART)
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
        ok, out = self.sh(host, hs.delete_script(c.service, rec, unused))
        if ok:
            removed = {name for _, name in ownership.parse_marks(out, "REMOVED")}
            kept = [name for _, name in ownership.parse_marks(out, "KEPT")]
            self.recorder.forget(host, c.service, removed)
            note = "; kept " + ", ".join(kept) + " (not recon's alone)" if kept else ""
            self.emit(EventKind.OK, host, c.service, f"deleted (its data directory is kept{note})", c.wave)
            self.outcome(c, Result.DELETED, note.lstrip("; "))
            return True
        self.emit(EventKind.FAIL, host, c.service, f"delete failed: {out}", c.wave)
        self.outcome(c, Result.FAILED, out)
        return False

def _ver(c: Change) -> str:
    if c.action == Action.REPLACE and c.from_version and c.to_version:
        return f" {c.from_version} → {c.to_version}"
    if c.action == Action.CREATE and c.to_version:
        return f" {c.to_version}"
    return ""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:300]


def _short_text(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return (lines[-1] if lines else "")[:300]
