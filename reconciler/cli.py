"""The `recon` command line: parses options, calls the pipeline, prints, and sets the exit code.

Heavy libraries (pyinfra, paramiko, deepdiff, rich, jsonschema) are imported inside commands so
that `recon --help`, `recon validate` and `recon explain` start fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import click

from reconciler.errors import ReconError, SpecError

SPEC_HELP = "Spec file (YAML or JSON). Repeat to layer files: later files override earlier ones."
EPILOG = """\b
Typical workflow:
  recon validate -f specs/platform.yaml
  recon plan     -f specs/platform.yaml -f specs/overrides/prod.yaml
  recon apply    -f specs/platform.yaml -f specs/overrides/prod.yaml
  recon status   -f specs/platform.yaml
\b
In CI:
  recon plan -f … --detailed-exitcode   # exit 0 no changes, 1 error, 2 changes
  recon diff origin/main HEAD -f specs/platform.yaml --format markdown
"""


def use_color(no_color: bool) -> bool:
    """Colour only on a terminal, and never with --no-color or NO_COLOR set."""
    if no_color or os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


def fail(exc: ReconError, fmt: str = "text") -> None:
    """Print a user error (never a traceback) and exit 1."""
    if fmt == "json" and isinstance(exc, SpecError):
        click.echo(json.dumps({"valid": False, "problems": [p.as_dict() for p in exc.problems]}, indent=2))
    else:
        color = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
        prefix = click.style("Error: ", fg="red", bold=True) if color else "Error: "
        if isinstance(exc, SpecError):
            n = len(exc.problems)
            click.echo(f"{prefix}the spec has {n} problem{'s' * (n != 1)}:", err=True)
            for problem in exc.problems:
                click.echo("  " + problem.render(), err=True)
        else:
            click.echo(prefix + str(exc), err=True)
    sys.exit(1)


spec_option = click.option("-f", "--file", "files", multiple=True, required=True, metavar="SPEC",
                           type=click.Path(dir_okay=False), help=SPEC_HELP)
no_color_option = click.option("--no-color", is_flag=True, help="No colour (also when NO_COLOR is set).")


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="recon", prog_name="recon")
def main() -> None:
    """recon: declarative plan/apply for a platform's systemd services.

    Write the desired state of your services in a spec (versions, artifacts, configs, limits,
    ports, dependencies, health checks, hardening). `recon plan` reads the hosts and shows what
    would change; `recon apply` does it with pyinfra, in dependency order, health-gated, keeping
    earlier releases for `recon rollback`.
    """


@main.command()
@spec_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--skip-artifacts", is_flag=True, help="Do not check artifact files and checksums.")
def validate(files: Sequence[str], fmt: str, skip_artifacts: bool) -> None:
    """Check spec files: schema, references, cycles, port clashes, units, artifacts.

    Every problem is reported in one run with its file, line, spec path, what was expected and
    what was found. Exit 0 when valid, 1 otherwise. No host is contacted.

    \b
    Example:
      recon validate -f specs/platform.yaml -f specs/overrides/local.yaml
    """
    from reconciler.spec import load_spec
    from reconciler.waves import waves

    try:
        spec = load_spec(files, check_artifacts=not skip_artifacts)
    except SpecError as exc:
        fail(exc, fmt)
        return
    order = waves(spec)
    if fmt == "json":
        click.echo(json.dumps({"valid": True, "files": list(files), "services": len(spec.services),
                               "hosts": len(spec.hosts), "waves": order}, indent=2))
        return
    n, h = len(spec.services), len(spec.hosts)
    click.echo(f"Valid: {n} service{'s' * (n != 1)} on {h} host{'s' * (h != 1)}, "
               f"{len(order)} dependency wave{'s' * (len(order) != 1)} ({', '.join(files)})")
    for i, wave in enumerate(order, 1):
        click.echo(f"  wave {i}: {', '.join(wave)}")


@main.command()
@click.argument("address", metavar="SERVICE.PATH")
@spec_option
def explain(address: str, files: Sequence[str]) -> None:
    """Show a value's final setting, the file and line that set it, and what it overrode.

    SERVICE.PATH is a service name and a dotted path inside it, e.g. `orchestrator.limits.memory_max`
    or `orchestrator.config.server.workers`; `hosts.NAME…` and `defaults.…` work too. Values that
    come from `defaults:` say so.

    \b
    Example:
      recon explain orchestrator.limits.memory_max -f specs/platform.yaml -f specs/overrides/local.yaml
    """
    from reconciler.explain import explain as do_explain

    try:
        click.echo(do_explain(files, address))
    except ReconError as exc:
        fail(exc)


state_option = click.option("--state", "state", metavar="DIR", envvar="RECON_STATE_DIR",
                            help="State directory (default ./state, or RECON_STATE_DIR).")


def emit_plan(plan: object, fmt: str, color: bool) -> None:
    """Print a plan in the chosen format."""
    if fmt == "json":
        from reconciler.render.jsonout import render_json

        click.echo(render_json(plan))  # type: ignore[arg-type]
    elif fmt == "markdown":
        from reconciler.render.markdown import render_markdown

        click.echo(render_markdown(plan))  # type: ignore[arg-type]
    else:
        from reconciler.render.text import render_text

        click.echo(render_text(plan, color=color), nl=False)  # type: ignore[arg-type]


@main.command()
@spec_option
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text",
              show_default=True, help="text for people, json for machines, markdown for pull requests.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("-o", "--out", "out", metavar="PLANFILE", type=click.Path(dir_okay=False),
              help="Save the plan, with fingerprints of spec, hosts and state, for `recon apply PLANFILE`.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 no changes, 1 error, 2 changes (drift counts).")
@click.option("--target", "targets", multiple=True, metavar="SERVICE",
              help="Plan only this service and what it depends on. Repeatable.")
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Plan only this host. Repeatable.")
@click.option("--refresh-only", is_flag=True, help="Show only drift: what changed on hosts outside recon.")
@state_option
@no_color_option
def plan(files: Sequence[str], fmt: str, as_json: bool, out: str | None, detailed_exitcode: bool,
         targets: Sequence[str], hosts: Sequence[str], refresh_only: bool, state: str | None,
         no_color: bool) -> None:
    """Observe the hosts, diff them against the spec, and show what apply would do.

    Every host is read with one batched command (all hosts at once). Each change says what it
    does (create, update, replace, delete, restart, reload), why, and which fields differ; a
    field the host changed outside recon is marked as drift. Nothing is changed anywhere.

    \b
    Examples:
      recon plan -f specs/platform.yaml -f specs/overrides/local.yaml
      recon plan -f … -o release.plan          # review, then: recon apply release.plan
      recon plan -f … --detailed-exitcode      # CI: 0 no changes, 2 changes, 1 error
      recon plan -f … --refresh-only           # drift only
      recon plan -f … --format markdown > plan.md
    """
    from reconciler import pipeline

    fmt = "json" if as_json else fmt
    try:
        run = pipeline.prepare(files, state, targets, hosts)
        pipeline.observe(run)
        result = pipeline.plan(run, refresh_only=refresh_only)
    except ReconError as exc:
        fail(exc)
        return
    if out:
        from reconciler.planfile import save_plan

        save_plan(result, out)
    emit_plan(result, fmt, use_color(no_color))
    if out and fmt == "text":
        click.echo(f"\nSaved the plan to {out}. Apply exactly this plan with: recon apply {out}")
    if result.errors or result.refused:
        sys.exit(1)
    if detailed_exitcode and result.has_changes:
        sys.exit(2)


@main.command()
@spec_option
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 no drift, 1 error, 2 drift.")
@click.option("--host", "hosts", multiple=True, metavar="HOST")
@state_option
@no_color_option
@click.pass_context
def drift(ctx: click.Context, files: Sequence[str], fmt: str, detailed_exitcode: bool, hosts: Sequence[str],
          state: str | None, no_color: bool) -> None:
    """Show only drift (same as `recon plan --refresh-only`), for scheduled CI checks."""
    ctx.invoke(plan, files=files, fmt=fmt, as_json=False, out=None, detailed_exitcode=detailed_exitcode,
               targets=(), hosts=hosts, refresh_only=True, state=state, no_color=no_color)


@main.command()
@click.argument("planfile", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@no_color_option
def show(planfile: str, fmt: str, no_color: bool) -> None:
    """Print a saved plan (from `recon plan -o PLANFILE`) in any format."""
    from reconciler.planfile import load_plan

    try:
        p = load_plan(planfile)
    except ReconError as exc:
        fail(exc)
        return
    emit_plan(p, fmt, use_color(no_color))


@main.command()
@click.argument("planfile", required=False, type=click.Path(dir_okay=False))
@click.option("-f", "--file", "files", multiple=True, metavar="SPEC", type=click.Path(dir_okay=False), help=SPEC_HELP)
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@click.option("--target", "targets", multiple=True, metavar="SERVICE", help="Only this service and its dependencies.")
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only this host.")
@click.option("--lock-timeout", default=0.0, metavar="SECONDS", show_default=True,
              help="Wait this long for another apply's lock.")
@click.option("--no-rollback", is_flag=True, help="Leave a service that fails its health check as it is.")
@click.option("-v", "--verbose", is_flag=True, help="Show every step.")
@state_option
@no_color_option
def apply(planfile: str | None, files: Sequence[str], auto_approve: bool, targets: Sequence[str],
          hosts: Sequence[str], lock_timeout: float, no_rollback: bool, verbose: bool, state: str | None,
          no_color: bool) -> None:
    """Carry out the plan: releases, configs, units, in dependency waves, health-gated.

    With -f it plans first, shows the plan and asks for confirmation (or --auto-approve). With a
    PLANFILE (from `recon plan -o`) it applies exactly that plan, and refuses it when the spec, a
    host or recon's state moved since it was made. A service that fails its health check is
    rolled back to its previous release automatically, and its dependents are not touched.
    Exit 0 when everything applied, 1 otherwise.

    \b
    Examples:
      recon apply -f specs/platform.yaml -f specs/overrides/local.yaml
      recon plan -f … -o release.plan && recon apply release.plan
    """
    from reconciler.runner import apply_command

    if bool(planfile) == bool(files):
        fail(ReconError("give either -f SPEC… or a PLANFILE (from `recon plan -o`)"))
    color = use_color(no_color)
    try:
        code = apply_command(files=files, planfile=planfile, auto_approve=auto_approve, targets=targets,
                             hosts=hosts, lock_timeout=lock_timeout, auto_rollback=not no_rollback,
                             verbose=verbose, state=state, color=color)
    except ReconError as exc:
        fail(exc)
        return
    sys.exit(code)


@main.command()
@click.argument("service")
@spec_option
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only on this host (default: all its hosts).")
@click.option("--to", "to_version", metavar="VERSION", help="The kept release to go to (default: the previous one).")
@click.option("--lock-timeout", default=0.0, metavar="SECONDS", show_default=True)
@state_option
@no_color_option
def rollback(service: str, files: Sequence[str], hosts: Sequence[str], to_version: str | None,
             lock_timeout: float, state: str | None, no_color: bool) -> None:
    """Switch SERVICE back to a kept release (binary, config and unit together), health-gated.

    \b
    Examples:
      recon rollback orchestrator -f specs/platform.yaml
      recon rollback orchestrator -f specs/platform.yaml --to 5.0.0 --host node1
    """
    from reconciler.runner import rollback_command

    try:
        code = rollback_command(files, service, hosts, to_version, lock_timeout, state, use_color(no_color))
    except ReconError as exc:
        fail(exc)
        return
    sys.exit(code)


@main.command()
@click.argument("service", required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-n", "--limit", default=50, show_default=True, help="Show the newest N entries.")
@state_option
def history(service: str | None, fmt: str, limit: int, state: str | None) -> None:
    """What was applied, when, by whom, with what result (newest last)."""
    from reconciler.pipeline import state_dir
    from reconciler.state import StateStore

    entries = [e for e in StateStore(state_dir(state)).history() if not service or e.get("service") == service]
    entries = entries[-limit:]
    if fmt == "json":
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("No history yet." if not service else f"No history for {service}.")
        return
    for e in entries:
        ver = e.get("to") or ""
        if e.get("from") and e.get("from") != e.get("to"):
            ver = f"{e.get('from')} → {e.get('to')}"
        detail = f"  ({e['detail']})" if e.get("detail") else ""
        click.echo(f"{e.get('time', '')[:19].replace('T', ' ')}  #{e.get('serial', '?'):<4} {e.get('user', '?')}@"
                   f"{e.get('machine', '?')}  {e.get('host')}/{e.get('service')}  {e.get('action')} {ver}  "
                   f"→ {e.get('result')}{detail}")


@main.command()
@spec_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--host", "hosts", multiple=True, metavar="HOST")
@state_option
@no_color_option
def status(files: Sequence[str], fmt: str, hosts: Sequence[str], state: str | None, no_color: bool) -> None:
    """Per host and service: desired vs running version, systemd state, health, memory."""
    from reconciler.runner import status_command

    try:
        code = status_command(files, hosts, state, fmt, use_color(no_color))
    except ReconError as exc:
        fail(exc)
        return
    sys.exit(code)


@main.command("force-unlock")
@click.argument("lock_id", required=False)
@state_option
def force_unlock(lock_id: str | None, state: str | None) -> None:
    """Remove the state lock left by an apply that is gone (give its lock id to be safe)."""
    from reconciler.pipeline import state_dir
    from reconciler.state import StateStore, describe_holder

    try:
        holder = StateStore(state_dir(state)).force_unlock(lock_id)
    except ReconError as exc:
        fail(exc)
        return
    click.echo(f"Removed the lock held by {describe_holder(holder)}.")


@main.command()
@click.argument("base")
@click.argument("head")
@click.option("-f", "--file", "files", multiple=True, metavar="SPEC",
              help="Spec file path(s) read at BASE and at HEAD (git refs). Without -f, BASE and HEAD are files.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@no_color_option
def diff(base: str, head: str, files: Sequence[str], fmt: str, no_color: bool) -> None:
    """Review a spec change without touching any host: what changes per service, and what is risky.

    BASE and HEAD are git refs (the -f files are read at each ref; WORKTREE means the files on
    disk), or, without -f, two spec files. Risky changes are flagged: a removed service others
    depend on, a dependency cycle, a port clash, an invalid spec, a major version bump or
    downgrade, lower memory limits. Exit 0 no changes, 2 changes, 1 invalid HEAD or an error-level risk.

    \b
    Examples:
      recon diff origin/main HEAD -f specs/platform.yaml --format markdown > diff.md
      recon diff HEAD WORKTREE -f specs/platform.yaml -f specs/overrides/prod.yaml
      recon diff old.yaml new.yaml
    """
    from reconciler.review import diff_command

    try:
        out, code = diff_command(base, head, files, fmt, use_color(no_color))
    except ReconError as exc:
        fail(exc)
        return
    click.echo(out, nl=not out.endswith("\n"))
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
