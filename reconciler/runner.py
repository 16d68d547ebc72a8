"""The commands' runners: each takes a typed request, does the work (spec → observe → plan → apply →
state) and returns a typed result. Nothing here prints or exits: `render/` turns results into text,
JSON or Markdown, and `cli.exit_code` maps them to exit codes. An apply's interaction (showing the plan,
asking for confirmation, progress) goes through the `ApplyUI` the caller passes in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.errors import ReconError, unknown_name

if TYPE_CHECKING:   # the pipeline is imported by the runners that use it, so `recon validate` starts fast
    from reconciler.outcome import ApplyResult, Event
    from reconciler.plan import Plan
    from reconciler.review.model import SpecDiff


# ------------------------------------------------------------------------------------------ requests
@dataclass(frozen=True)
class ValidateRequest:
    files: tuple[str, ...]
    check_artifacts: bool = True


@dataclass(frozen=True)
class PlanRequest:
    files: tuple[str, ...]
    state: str | None = None
    targets: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    refresh_only: bool = False
    out: str | None = None           # save the plan here, for `recon apply PLANFILE`


@dataclass(frozen=True)
class ApplyRequest:
    files: tuple[str, ...] = ()
    planfile: str | None = None      # apply exactly this saved plan (files come from it)
    auto_approve: bool = False
    targets: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    lock_timeout: float = 0.0
    auto_rollback: bool = True
    state: str | None = None


@dataclass(frozen=True)
class RollbackRequest:
    files: tuple[str, ...]
    service: str
    hosts: tuple[str, ...] = ()
    to_version: str | None = None
    lock_timeout: float = 0.0
    state: str | None = None


@dataclass(frozen=True)
class StatusRequest:
    files: tuple[str, ...]
    hosts: tuple[str, ...] = ()
    state: str | None = None


@dataclass(frozen=True)
class HistoryRequest:
    service: str | None = None
    limit: int = 50
    state: str | None = None


@dataclass(frozen=True)
class DiffRequest:
    base: str                        # a git ref, WORKTREE, or a file
    head: str
    files: tuple[str, ...] = ()      # the spec files read at each ref (or the layers under two files)


@dataclass(frozen=True)
class ForceUnlockRequest:
    lock_id: str | None = None
    state: str | None = None


# ------------------------------------------------------------------------------------------- results
@dataclass
class ValidateResult:
    files: list[str]
    services: int
    hosts: int
    waves: list[list[str]]


@dataclass
class PlanResult:
    plan: Plan
    saved_to: str | None = None


@dataclass
class ApplyRunResult:
    plan: Plan
    applied: ApplyResult | None = None     # None: there was nothing to apply
    from_planfile: bool = False


@dataclass
class RollbackResult:
    already: list[str] = field(default_factory=list)     # HOST/SERVICE already on the wanted release
    target: str | None = None
    applied: ApplyResult | None = None


@dataclass
class StatusRow:
    host: str
    service: str
    desired: str
    installed: str | None
    running: str | None
    state: str                 # ActiveState/SubState, `absent`, or `unreachable`
    health: str
    healthy: bool
    memory: str
    memory_max: str
    restarts: int
    pid: int
    error: str | None = None   # why the host could not be observed

    @property
    def on_desired(self) -> bool:
        return self.running == self.desired


@dataclass
class StatusResult:
    rows: list[StatusRow]
    errors: list[str]

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.healthy and r.on_desired for r in self.rows)


@dataclass
class HistoryResult:
    entries: list[dict[str, Any]]
    service: str | None = None
    skipped: list[tuple[int, str]] = field(default_factory=list)   # unreadable lines: (line number, why)
    path: str = ""


class ApplyUI(Protocol):
    """How an apply talks to its operator: the plan before it acts, the confirmation, each step."""

    def show_plan(self, plan: Plan) -> None: ...

    def confirm(self) -> None: ...          # raise ReconError to cancel

    def on_event(self, event: Event) -> None: ...


# ------------------------------------------------------------------------------------------- runners
def run_validate(req: ValidateRequest) -> ValidateResult:
    from reconciler.spec import load_spec
    from reconciler.waves import waves

    spec = load_spec(req.files, check_artifacts=req.check_artifacts)
    return ValidateResult(list(req.files), len(spec.services), len(spec.hosts), waves(spec))


def run_plan(req: PlanRequest) -> PlanResult:
    """Observe, diff, and (with `out`) save the plan. Nothing is changed anywhere."""
    from reconciler import pipeline

    run = pipeline.prepare(req.files, req.state, req.targets, req.hosts, connect_early=True)
    pipeline.observe(run, warm=("reconciler.plan", "reconciler.render"))
    plan = pipeline.plan(run, refresh_only=req.refresh_only)
    if req.out:
        from reconciler.planfile import save_plan

        save_plan(plan, req.out)
    return PlanResult(plan, req.out)


def run_apply(req: ApplyRequest, ui: ApplyUI) -> ApplyRunResult:
    """Lock, observe, plan (or check a saved plan is still current), confirm, apply."""
    from reconciler import pipeline
    from reconciler.apply import Applier
    from reconciler.planfile import load_plan, stale_reasons
    from reconciler.state import StateStore
    from reconciler.transport import Session

    saved: Plan | None = None
    files = req.files
    if req.planfile:
        saved = load_plan(req.planfile)
        files = tuple(saved.spec_files)
    store = StateStore(pipeline.state_dir(req.state))
    with store.lock(f"recon apply {' '.join(files)}", timeout=req.lock_timeout):
        run = pipeline.prepare(files, req.state, req.targets, req.hosts,
                               lineage=saved.fingerprints.get("lineage") if saved is not None else None)
        with Session(pipeline.hosts_in_scope(run)) as session:
            pipeline.observe(run, session)
            plan = pipeline.plan(run)
            if plan.errors:
                ui.show_plan(plan)
                raise ReconError("not applying: some hosts could not be observed (see above)")
            if plan.refused:
                ui.show_plan(plan)
                raise ReconError("not applying: recon refuses part of this plan (see above)")
            if saved is not None:
                reasons = stale_reasons(saved.fingerprints, plan.fingerprints)
                if not reasons and [(c.address, c.action) for c in saved.changes] != [
                        (c.address, c.action) for c in plan.changes]:
                    reasons.append("the changes planned now differ from the saved plan")
                if reasons:
                    raise ReconError(f"the saved plan {req.planfile} is stale:\n  " + "\n  ".join(reasons)
                                     + "\nMake a new plan with `recon plan -o`.")
            else:
                ui.show_plan(plan)
            settle_records(run, plan)
            if not plan.changes:
                return ApplyRunResult(plan, None, saved is not None)
            if saved is None and not req.auto_approve:
                ui.confirm()     # a saved plan is what was approved
            applier = Applier(run, plan, session, ui.on_event, command="apply", auto_rollback=req.auto_rollback)
            return ApplyRunResult(plan, applier.execute(), saved is not None)


def settle_records(run: Any, plan: Plan) -> None:
    """Services that need no change are recorded as applied: a crash after the host converged but
    before the record was written, or a host set up to match the spec, leaves state that now agrees."""
    from reconciler.apply import previous_for, record_of
    from reconciler.state import RecordStatus

    changed = {c.address for c in plan.changes} | set(plan.ignored_drift)
    dirty = False
    for host, svcs in run.desired.items():
        obs = run.observed.get(host)
        if obs is None or obs.error:
            continue
        for name, d in svcs.items():
            if d.address in changed or (run.targets is not None and name not in run.targets):
                continue
            o = obs.services.get(name)
            rec = run.state.record(host, name)
            if o is None or not o.exists or (rec is not None and rec.status == RecordStatus.APPLIED
                                              and rec.version == d.version and rec.unit_sha == d.unit_sha
                                              and rec.config_sha == d.config_sha):
                continue
            new = record_of(d, run.salt, RecordStatus.APPLIED, previous_for(rec, d.version, o.releases),
                            run.state.serial + 1)
            new.created_dirs = rec.created_dirs if rec else []    # adopted as found: recon created nothing
            run.state.hosts.setdefault(host, {})[name] = new
            dirty = True
    if dirty:
        run.store.save(run.state)


def run_rollback(req: RollbackRequest, on_event: Any) -> RollbackResult:
    """Switch a service back to a kept release on its hosts, health-gated, recorded in state."""
    from reconciler import pipeline
    from reconciler.apply import Applier
    from reconciler.plan import Action, Change, Effect, FieldChange, Part, Plan
    from reconciler.state import StateStore
    from reconciler.transport import Session

    store = StateStore(pipeline.state_dir(req.state))
    service = req.service
    result = RollbackResult(target=req.to_version)
    with store.lock(f"recon rollback {service}", timeout=req.lock_timeout):
        run = pipeline.prepare(req.files, req.state, (), req.hosts, services=(service,))
        on = [h for h in run.spec.services[service].hosts if not req.hosts or h in req.hosts]
        scope = {h: run.spec.hosts[h] for h in on}
        with Session(scope) as session:
            pipeline.observe(run, session)
            if any(run.observed[h].error for h in on):
                raise ReconError("; ".join(str(run.observed[h].error) for h in on if run.observed[h].error))
            changes = []
            for h in on:
                obs = run.observed[h].services.get(service)
                rec = run.state.record(h, service)
                current = obs.current if obs else None
                target = req.to_version or (rec.previous_version if rec else None)
                kept = obs.releases if obs else []
                if not target:
                    others = [r for r in kept if r != current]
                    raise ReconError(f"{h}/{service}: no previous release recorded; choose one with --to "
                                     f"(kept on the host: {', '.join(others) or 'none'})")
                if target not in kept:
                    raise ReconError(f"{h}/{service}: release {target} is not kept on the host "
                                     f"(kept: {', '.join(kept) or 'none'}).{_close(target, kept)}")
                if target == current:
                    result.already.append(f"{h}/{service} already runs {target}")
                    continue
                result.target = target
                changes.append(Change(f"{h}/{service}", h, service, Action.REPLACE, f"rollback {current} → {target}",
                                      Effect.RESTART, fields=[FieldChange("version", current, target,
                                                                          part=Part.RELEASE)],
                                      from_version=current, to_version=target))
            if changes:
                applier = Applier(run, Plan(changes=changes), session, on_event, command="rollback")
                result.applied = applier.rollback(changes)
    return result


def _close(name: str, choices: Sequence[str]) -> str:
    from reconciler.errors import did_you_mean

    return did_you_mean(name, choices)


def run_status(req: StatusRequest) -> StatusResult:
    """Desired vs running version, systemd state, health and memory per host and service."""
    from reconciler import pipeline

    run = pipeline.prepare(req.files, req.state, (), req.hosts, connect_early=True)
    pipeline.observe(run)
    rows: list[StatusRow] = []
    errors: list[str] = []
    for host, svcs in run.desired.items():
        if run.hosts and host not in run.hosts:
            continue
        obs = run.observed.get(host)
        if obs is None or obs.error:
            error = str(obs.error) if obs else f"{host}: not observed"
            errors.append(error)
            # every service of an unreachable host is listed, so a host that is down never reads as "0/0"
            rows.extend(StatusRow(host, name, d.version, None, None, "unreachable", "-", False, "-", "-", 0, 0,
                                  error) for name, d in svcs.items())
            continue
        for name, d in svcs.items():
            o = obs.services.get(name)
            props = o.props if o else {}
            rows.append(StatusRow(
                host=host, service=name, desired=d.version,
                installed=o.current if o else None, running=o.running_version if o else None,
                state=f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}" if props else "absent",
                health=o.health.summary() if o and o.health else "-",
                healthy=bool(o and o.health and o.health.ok),
                memory=_mib(props.get("MemoryCurrent")), memory_max=_mib(props.get("MemoryMax")),
                restarts=int(props.get("NRestarts", "0") or 0), pid=o.main_pid if o else 0))
    return StatusResult(rows, errors)


def _mib(v: str | None) -> str:
    if not v or not v.isdigit():
        return "-"
    n = int(v)
    return f"{n / 1048576:.1f}M" if n < 1024**3 else f"{n / 1024**3:.1f}G"


def run_history(req: HistoryRequest) -> HistoryResult:
    """The newest `limit` history entries (of one service); a name recon never saw is an error."""
    from reconciler import pipeline
    from reconciler.state import StateStore

    store = StateStore(pipeline.state_dir(req.state))
    every, skipped = store.read_history()
    if req.service and not any(e.get("service") == req.service for e in every):
        known = {str(e.get("service")) for e in every} | {s for svcs in store.load().hosts.values() for s in svcs}
        if req.service not in known:
            raise unknown_name("service", req.service, known, where="recon's state or history")
    entries = [e for e in every if not req.service or e.get("service") == req.service]
    return HistoryResult(entries[-req.limit:] if req.limit > 0 else entries, req.service, skipped,
                         str(store.history_path))


def run_diff(req: DiffRequest) -> SpecDiff:
    """The spec at BASE and at HEAD, compared, with the risks of the change; no host is contacted."""
    from reconciler.review import load_diff

    return load_diff(req.base, req.head, req.files)


def run_force_unlock(req: ForceUnlockRequest) -> dict[str, Any]:
    """Remove the state lock; returns who held it."""
    from reconciler import pipeline
    from reconciler.state import StateStore

    return StateStore(pipeline.state_dir(req.state)).force_unlock(req.lock_id)
