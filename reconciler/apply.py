"""Apply a plan with pyinfra: releases, configs, units, dependency waves, health gates, automatic
rollback, rolling host batches, and step-by-step state records so a crash at any point converges.

This module is the orchestration (batches, waves, gates); the shell text it runs on hosts comes from
`hostscripts`, and every state record and history line is written through `recorder`. Output is not
formatted here: every step is reported through an `on_event(Event)` callback.
"""

from __future__ import annotations

import io
import logging
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
from pyinfra.api.operation import add_op
from pyinfra.api.state import StateStage
from pyinfra.operations import files, systemd

from reconciler import external, ownership
from reconciler import hostscripts as hs
from reconciler.archive import load_archive, pack
from reconciler.desired import DesiredService, logrotate_text, release_entries, sha256_text
from reconciler.errors import ReconError
from reconciler.outcome import ApplyResult, Event, EventKind, Outcome, Result
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
    """The artifact's bytes, checked against the spec's sha256 before anything is uploaded."""
    if d.archive_sha256:   # an archive: read (or downloaded) once per run, shared with the plan's tree digest
        return load_archive(path, url, d.archive_sha256, d.service)
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
        self.recorder = Recorder(run.store, run.state, run.salt, command)
        self.result = ApplyResult()
        self.artifacts: dict[str, bytes] = {}
        st = session.state
        assert st is not None, "the session is not open"
        st.set_stage(StateStage.Execute)
        st.is_executing = True
        self._op_seq = 0
        self.fallback: dict[tuple[str, str], str | None] = {}   # (host, service) -> release to go back to
        self.op_errors = _OpErrors()
        self.lost: dict[str, str] = {}   # hosts whose connection went away mid-apply, and the error
        self.externals_seen: dict[tuple[str, str], external.ExternalHealth] = {}   # (host, name): probed once
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

    # --- state (written through the recorder) ---------------------------------------------------
    def ensure(self, host: str, d: DesiredService) -> None:
        """Create the service's missing account, group and directories (never modifying existing ones)
        and record what was created: its own directories with its record, the rest per host."""
        ok, out = self.sh(host, hs.ensure_script(d, self.recorder.mine(host, d.service)))
        self.recorder.ensured(host, d, ownership.parse_marks(out, "CREATED"))
        if not ok:
            lines = [x for x in out.splitlines() if not x.startswith("CREATED\t")]
            raise ReconError("; ".join(lines) or "creating the account and directories failed")

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

    # --- one wave on one host --------------------------------------------------------------------
    def apply_wave(self, host: str, wave: int, changes: list[Change], desired: dict[str, DesiredService]) -> bool:
        failed: list[Change] = self.refuse_for_externals(host, wave, changes)
        ready: list[Change] = []
        for c in changes:
            if c in failed:
                continue
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
                    self.recorder.record(d, RecordStatus.APPLIED, self._previous(host, c),
                                         in_place=c.action in _SAME_RELEASE)
                    self.prune(host, d)
                    self.emit(EventKind.OK, host, c.service, f"{_DONE[c.action]}{_ver(c)}, healthy ({detail})", wave)
                    self.outcome(c, _DONE[c.action], detail)
                else:
                    failed.append(c)
                    self.emit(EventKind.FAIL, host, c.service, f"health check failed: {detail}", wave)
                    self.handle_failure(host, c, d, detail, wave)
        return not failed

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

    def stage_files(self, host: str, c: Change, d: DesiredService) -> None:
        """Upload what the change needs into the release directory; nothing is switched yet."""
        self.emit(EventKind.STEP, host, c.service, f"{c.action}: preparing release {d.version}", c.wave)
        needs_files = c.action in (*_NEW_RELEASE, *_SAME_RELEASE)
        self.ensure(host, d)
        if not needs_files:
            return
        release_bin = d.binary_path
        if c.action in _NEW_RELEASE or any(f.part == Part.RELEASE for f in c.fields):
            if d.entrypoint:
                self.put_tree(host, d)
            else:
                # files.put creates the release directory; the sha256 is checked on the host before switching
                self.op(host, files.put, src=io.BytesIO(self._artifact(d)), dest=release_bin, mode="755")
        cfg_in_release = f"{d.release_dir}/{d.service}.toml"
        unit_in_release = f"{d.release_dir}/{d.unit_name}"
        if c.action in _SAME_RELEASE:
            # same release: keep what was there so an automatic rollback can put it back
            # (umask 077 and no old copy to write into: the env file's copy is never readable by others)
            self.sh(host, hs.keep_prev_script(d))
        self.op(host, files.put, src=io.BytesIO(d.config_text.encode()), dest=cfg_in_release,
                user="root", group=d.group, mode="640")
        self.op(host, files.put, src=io.BytesIO(d.unit_text.encode()), dest=unit_in_release, mode="644")
        if d.secret_names:
            self.write_secrets(host, d)

    def put_tree(self, host: str, d: DesiredService) -> None:
        """An archive release: its checked entries (`desired.release_entries`) packed as one tar, uploaded beside
        the releases and unpacked into the release directory (`hostscripts.unpack_script`); the tree digest is
        checked on the host before switching, as a binary's sha256 is."""
        tar_path = f"{d.service_dir}/.recon-upload-{d.version}.tar"
        data = pack(release_entries(d, self._artifact(d)))
        self.op(host, files.put, src=io.BytesIO(data), dest=tar_path, mode="600")
        ok, out = self.sh(host, hs.unpack_script(d, tar_path))
        if not ok:
            raise ReconError(f"unpacking the release failed: {out or 'no output'}")

    def write_secrets(self, host: str, d: DesiredService) -> None:
        """The env file, 0600 and root's from its first byte (`hostscripts.env_file_script`). pyinfra's
        files.put wrote it with the default mode, then chmodded."""
        ok, out = self.sh(host, hs.env_file_script(d.env_path), stdin=hs.env_file_stdin(d.secrets_text))
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
        ok, out = self.sh(host, hs.staging_cleanup_script(d.release_dir, new_release))
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
            self.recorder.record(d, RecordStatus.IN_PROGRESS, self._previous(host, c))
        ok, out = self.sh(host, hs.activate_script([(desired[c.service], self._dropins_to_remove(host, c))
                                                    for c in changes]))
        if not ok:
            raise ReconError(out or "switching releases failed")
        self.op(host, systemd.daemon_reload)

    def bounce_and_check(self, host: str, changes: list[Change], desired: dict[str, DesiredService]
                         ) -> dict[str, tuple[bool, str]]:
        """Start/restart/reload the wave's services and wait for their health, in one command."""
        services = [(desired[c.service], c.effect) for c in changes]
        waves = {c.service: c.wave for c in changes}

        def progress(line: str) -> None:   # a failed probe while the gate waits: PROBE name code elapsed timeout
            parts = line.split("\t")
            if len(parts) == 5 and parts[0] == "PROBE" and parts[1] in waves:
                answer = "no answer" if parts[2] in ("", "000") else f"HTTP {parts[2]}"
                self.emit(EventKind.WAIT, host, parts[1], f"waiting for health: {answer} ({parts[3]}s of {parts[4]}s)",
                          waves[parts[1]])

        res = self.session.stream(host, hs.bounce_script(services, enable=True), progress,
                                  timeout=hs.bounce_timeout([d for d, _ in services]))
        if res.lost:
            self.lost.setdefault(host, res.stderr)
        return hs.parse_results(res.stdout)

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

    def prune(self, host: str, d: DesiredService) -> None:
        """Keep `keep_releases` newest plus the running and the previous release."""
        rec = self.state.record(host, d.service)
        keep = {d.version} | ({rec.previous_version} if rec and rec.previous_version else set())
        self.sh(host, hs.prune_script(d.service_dir, keep, d.keep_releases))


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


def _ver(c: Change) -> str:
    if c.action == Action.REPLACE and c.from_version and c.to_version:
        return f" {c.from_version} → {c.to_version}"
    if c.action == Action.CREATE and c.to_version:
        return f" {c.to_version}"
    return ""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:300]
