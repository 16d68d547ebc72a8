"""The long-running commands (apply, rollback, status): lock, connect, observe, act, report.

Kept apart from `cli.py` so the command-line layer stays thin and these flows can be driven from
tests and benchmarks the same way the CLI drives them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from reconciler import pipeline
from reconciler.errors import ReconError
from reconciler.plan import Change, FieldChange, Plan


def _confirm(auto_approve: bool) -> None:
    if auto_approve:
        return
    if not sys.stdin.isatty():
        raise ReconError("apply needs confirmation: run it in a terminal, or pass --auto-approve")
    if click.prompt("\nDo you want to apply these changes? Only 'yes' will be accepted", default="",
                    show_default=False).strip() != "yes":
        raise ReconError("apply cancelled")


def apply_command(*, files: Sequence[str], planfile: str | None, auto_approve: bool, targets: Sequence[str],
                  hosts: Sequence[str], lock_timeout: float, auto_rollback: bool, verbose: bool,
                  state: str | None, color: bool) -> int:
    from reconciler.apply import Applier
    from reconciler.planfile import load_plan, stale_reasons
    from reconciler.render.progress import Progress, print_summary
    from reconciler.render.text import render_text
    from reconciler.state import StateStore
    from reconciler.transport import Session

    saved: Plan | None = None
    if planfile:
        saved = load_plan(planfile)
        files = saved.spec_files
        auto_approve = True   # the saved plan is what was approved
    store = StateStore(pipeline.state_dir(state))
    with store.lock(f"recon apply {' '.join(files)}", timeout=lock_timeout):
        run = pipeline.prepare(files, state, targets, hosts)
        with Session(pipeline.hosts_in_scope(run)) as session:
            pipeline.observe(run, session)
            plan = pipeline.plan(run)
            if plan.errors:
                click.echo(render_text(plan, color=color), nl=False)
                raise ReconError("not applying: some hosts could not be observed (see above)")
            if plan.refused:
                click.echo(render_text(plan, color=color), nl=False)
                raise ReconError("not applying: recon refuses part of this plan (see above)")
            if saved is not None:
                reasons = stale_reasons(saved.fingerprints, plan.fingerprints)
                if not reasons and [(c.address, c.action) for c in saved.changes] != [
                        (c.address, c.action) for c in plan.changes]:
                    reasons.append("the changes planned now differ from the saved plan")
                if reasons:
                    raise ReconError(f"the saved plan {planfile} is stale: " + "; ".join(reasons)
                                     + ". Make a new plan with `recon plan -o`.")
            else:
                click.echo(render_text(plan, color=color), nl=False)
            settle_records(run, plan)
            if not plan.changes:
                if saved is None:
                    return 0
                click.echo("No changes. Your hosts match the spec.")
                return 0
            _confirm(auto_approve)
            click.echo()
            applier = Applier(run, plan, session, Progress(color, verbose), command="apply")
            result = applier.execute()
        print_summary(result, color)
    return 1 if result.failed else 0


def settle_records(run: Any, plan: Plan) -> None:
    """Services that need no change are recorded as applied: a crash after the host converged but
    before the record was written, or a host set up to match the spec, leaves state that now agrees."""
    from reconciler.apply import record_of

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
            if o is None or not o.exists or (rec is not None and rec.status == "applied"
                                              and rec.version == d.version and rec.unit_sha == d.unit_sha
                                              and rec.config_sha == d.config_sha):
                continue
            new = record_of(d, run.salt, "applied", rec.previous_version if rec else None, run.state.serial + 1)
            new.created_dirs = rec.created_dirs if rec else []    # adopted as found: recon created nothing
            run.state.hosts.setdefault(host, {})[name] = new
            dirty = True
    if dirty:
        run.store.save(run.state)


def rollback_command(files: Sequence[str], service: str, hosts: Sequence[str], to_version: str | None,
                     lock_timeout: float, state: str | None, color: bool) -> int:
    """Switch a service back to a kept release on its hosts, health-gated, recorded in state."""
    from reconciler.apply import Applier
    from reconciler.render.progress import Progress, print_summary
    from reconciler.state import StateStore
    from reconciler.transport import Session

    store = StateStore(pipeline.state_dir(state))
    with store.lock(f"recon rollback {service}", timeout=lock_timeout):
        run = pipeline.prepare(files, state, (), hosts)
        if service not in run.spec.services:
            raise ReconError(f"no service {service!r} in the spec")
        on = [h for h in run.spec.services[service].hosts if not hosts or h in hosts]
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
                target = to_version or (rec.previous_version if rec else None)
                if not target:
                    kept = [r for r in (obs.releases if obs else []) if r != current]
                    raise ReconError(f"{h}/{service}: no previous release recorded; choose one with --to "
                                     f"(kept on the host: {', '.join(kept) or 'none'})")
                if obs is None or target not in obs.releases:
                    raise ReconError(f"{h}/{service}: release {target} is not kept on the host "
                                     f"(kept: {', '.join(obs.releases if obs else []) or 'none'})")
                if target == current:
                    click.echo(f"{h}/{service} already runs {target}.")
                    continue
                changes.append(Change(f"{h}/{service}", h, service, "replace", f"rollback {current} → {target}",
                                      "restart", fields=[FieldChange("version", current, target)],
                                      from_version=current, to_version=target))
            if not changes:
                return 0
            applier = Applier(run, Plan(changes=changes), session, Progress(color), command="rollback")
            result = applier.rollback(changes)
        print_summary(result, color)
    return 1 if result.failed else 0


def status_command(files: Sequence[str], hosts: Sequence[str], state: str | None, fmt: str, color: bool) -> int:
    """Desired vs running version, systemd state, health and memory per host and service."""
    import json

    run = pipeline.prepare(files, state, (), hosts)
    pipeline.observe(run)
    rows: list[dict[str, Any]] = []
    errors = []
    for host, svcs in run.desired.items():
        if run.hosts and host not in run.hosts:
            continue
        obs = run.observed.get(host)
        if obs is None or obs.error:
            errors.append(obs.error if obs else f"{host}: not observed")
            continue
        for name, d in svcs.items():
            o = obs.services.get(name)
            mem = o.props.get("MemoryCurrent") if o else None
            rows.append({
                "host": host, "service": name, "desired": d.version,
                "installed": o.current if o else None, "running": o.running_version if o else None,
                "state": (f"{o.props.get('ActiveState', '?')}/{o.props.get('SubState', '?')}"
                          if o and o.props else "absent"),
                "health": (o.health.summary() if o and o.health else "-"),
                "healthy": bool(o and o.health and o.health.ok),
                "memory": _mib(mem), "memory_max": _mib(o.props.get("MemoryMax") if o else None),
                "restarts": int(o.props.get("NRestarts", "0") or 0) if o and o.props else 0,
                "pid": o.main_pid if o else 0,
            })
    if fmt == "json":
        click.echo(json.dumps({"services": rows, "errors": errors}, indent=2))
    else:
        _print_status(rows, errors, color)
    ok = not errors and all(r["healthy"] and r["running"] == r["desired"] for r in rows)
    return 0 if ok else 1


def _mib(v: str | None) -> str:
    if not v or not v.isdigit():
        return "-"
    n = int(v)
    return f"{n / 1048576:.1f}M" if n < 1024**3 else f"{n / 1024**3:.1f}G"


def _print_status(rows: list[dict[str, Any]], errors: list[str], color: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(force_terminal=color, no_color=not color, highlight=False, width=120)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("HOST", "SERVICE", "DESIRED", "RUNNING", "STATE", "HEALTH", "MEMORY", "MAX", "RESTARTS"):
        table.add_column(col)
    for r in rows:
        match = r["running"] == r["desired"]
        table.add_row(r["host"], r["service"], r["desired"],
                      f"[{'green' if match else 'yellow'}]{r['running'] or '-'}[/]",
                      f"[{'green' if r['state'].startswith('active') else 'red'}]{r['state']}[/]",
                      f"[{'green' if r['healthy'] else 'red'}]{r['health']}[/]",
                      r["memory"], r["memory_max"], str(r["restarts"]))
    console.print(table)
    for e in errors:
        console.print(f"[red]✗ {e}[/]")
    healthy = sum(1 for r in rows if r["healthy"])
    console.print(f"\n{healthy}/{len(rows)} services healthy, "
                  f"{sum(1 for r in rows if r['running'] == r['desired'])}/{len(rows)} on the desired version.")

