"""The commands that change hosts: `recon apply`, `recon rollback` and the delete path (`run_destroy`,
Pulumi's delete). An apply's interaction goes through the `ApplyUI` the caller passes in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.errors import ReconError, did_you_mean
from reconciler.runner.scope import lock_scope

if TYPE_CHECKING:
    from reconciler.outcome import ApplyResult, Event
    from reconciler.plan import Plan


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
class DestroyRequest:
    files: tuple[str, ...]
    services: tuple[str, ...] = ()   # none: every service of the spec
    hosts: tuple[str, ...] = ()
    lock_timeout: float = 0.0
    state: str | None = None


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


class ApplyUI(Protocol):
    """How an apply talks to its operator: the plan before it acts, the confirmation, each step."""

    def show_plan(self, plan: Plan) -> None: ...

    def confirm(self) -> None: ...          # raise ReconError to cancel

    def on_event(self, event: Event) -> None: ...


def run_apply(req: ApplyRequest, ui: ApplyUI) -> ApplyRunResult:
    """Lock, observe, plan (or check a saved plan is still current), confirm, apply."""
    from reconciler import pipeline
    from reconciler.planfile import load_plan, stale_reasons

    saved: Plan | None = None
    files = req.files
    if req.planfile:
        saved = load_plan(req.planfile)
        files = tuple(saved.spec_files)
    store = pipeline.open_store(req.state)
    spec, scope = lock_scope(store, files, req.hosts)
    with store.lock(f"recon apply {' '.join(files)}", timeout=req.lock_timeout, hosts=scope):
        run = pipeline.prepare(files, req.state, req.targets, req.hosts,
                               lineage=saved.fingerprints.get("lineage") if saved is not None else None, store=store,
                               spec=spec, connect_early=True)
        # observed over OpenSSH as `recon plan` is (the login began while the spec loaded): a converged apply
        # never starts pyinfra; its session opens only when there is something to do
        pipeline.observe(run, warm=("reconciler.plan",))
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
        from reconciler.apply import Applier  # pyinfra (and gevent's patching) only for a real apply
        from reconciler.transport import Session

        with Session(pipeline.hosts_in_scope(run)) as session:
            missing = [h for h in session.errors if h in {c.host for c in plan.changes}]
            if missing:
                raise ReconError("not applying: " + "; ".join(session.errors[h] for h in missing))
            applier = Applier(run, plan, session, ui.on_event, command="apply", auto_rollback=req.auto_rollback)
            return ApplyRunResult(plan, applier.execute(), saved is not None)


def settle_records(run: Any, plan: Plan) -> None:
    """Services that need no change are recorded as applied: a crash after the host converged but
    before the record was written, or a host set up to match the spec, leaves state that now agrees."""
    from reconciler.recorder import Recorder

    Recorder(run.store, run.state, run.salt).settle(run, plan)


def run_rollback(req: RollbackRequest, on_event: Any) -> RollbackResult:
    """Switch a service back to a kept release on its hosts, health-gated, recorded in state."""
    from reconciler import pipeline
    from reconciler.apply import Applier
    from reconciler.plan import Action, Change, Effect, FieldChange, Part, Plan
    from reconciler.transport import Session

    store = pipeline.open_store(req.state)
    service = req.service
    result = RollbackResult(target=req.to_version)
    spec, scope = lock_scope(store, req.files, req.hosts, service)
    with store.lock(f"recon rollback {service}", timeout=req.lock_timeout, hosts=scope):
        run = pipeline.prepare(req.files, req.state, (), req.hosts, services=(service,), store=store, spec=spec)
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
                kept = obs.releases if obs else []
                if not req.to_version and rec is not None and rec.in_place and current == rec.version:
                    # the last apply changed this release's files in place: undo that first
                    result.target = current
                    changes.append(Change(f"{h}/{service}", h, service, Action.UPDATE,
                                          f"rollback of the last apply to {current}",
                                          Effect.RESTART,
                                          fields=[FieldChange("config", "(as applied)", "(before the last apply)",
                                                              part=Part.CONFIG)],
                                          from_version=current, to_version=current))
                    continue
                target = req.to_version or (rec.previous_version if rec else None)
                if not target:
                    others = [r for r in kept if r != current]
                    raise ReconError(f"{h}/{service}: no previous release recorded; choose one with --to "
                                     f"(kept on the host: {', '.join(others) or 'none'})")
                if target not in kept:
                    raise ReconError(f"{h}/{service}: release {target} is not kept on the host "
                                     f"(kept: {', '.join(kept) or 'none'}).{did_you_mean(target, kept)}")
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


def run_destroy(req: DestroyRequest, ui: ApplyUI) -> ApplyRunResult:
    """Remove the spec's services (or the named ones) from their hosts, as if they had been taken out of
    the spec: the plan's delete path, so only what recon recorded creating goes, under the same ownership
    rules (nothing recon did not create is touched). A service that stays and depends on one that goes is
    refused. Used by the Pulumi provider's delete (`reconciler.pulumi`)."""
    from reconciler import pipeline
    from reconciler.apply import Applier
    from reconciler.transport import Session

    store = pipeline.open_store(req.state)
    spec, scope = lock_scope(store, req.files, req.hosts)
    with store.lock(f"recon destroy {' '.join(req.services) or '--all'}", timeout=req.lock_timeout, hosts=scope):
        run = pipeline.prepare(req.files, req.state, (), req.hosts, services=req.services, secrets=False,
                               store=store, spec=spec)
        gone = set(req.services) or set(run.spec.services)
        for name, svc in run.spec.services.items():
            needs = sorted(set(svc.depends_on) & gone)
            if name not in gone and needs:
                raise ReconError(f"not removing {', '.join(needs)}: {name} stays and depends on it "
                                 f"(remove {name} too)")
        run.desired = {h: {n: d for n, d in svcs.items() if n not in gone} for h, svcs in run.desired.items()}
        run.targets = gone
        with Session(pipeline.hosts_in_scope(run)) as session:
            pipeline.observe(run, session)
            plan = pipeline.plan(run)
            ui.show_plan(plan)
            if plan.errors:
                raise ReconError("not removing: some hosts could not be observed (see above)")
            if plan.refused:
                raise ReconError("not removing: recon refuses part of this plan (see above)")
            if not plan.changes:
                return ApplyRunResult(plan, None)
            ui.confirm()
            applier = Applier(run, plan, session, ui.on_event, command="destroy", auto_rollback=False)
            return ApplyRunResult(plan, applier.execute())
