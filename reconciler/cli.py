"""The `recon` command line. Every command has the same shape: options → a typed request
(`runner.*Request`) → its runner (`runner.run_*`) → a typed result → a renderer in `render/` → an exit
code (`exit_code`, the one place results become exit codes; a `ReconError` is exit 1, via `reports_errors`).

Heavy libraries (pyinfra, paramiko, deepdiff, rich, jsonschema) are imported inside commands so
that `recon --help`, `recon validate` and `recon explain` start fast.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

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
    """Print a user error (never a traceback); the caller exits 1."""
    if fmt == "json" and isinstance(exc, SpecError):
        import json

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


def reports_errors(fn: Callable[..., int | None]) -> Callable[..., int]:
    """A command's errors as the user sees them: a `ReconError` prints (never a traceback) and exits 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return fn(*args, **kwargs) or 0
        except ReconError as exc:
            fail(exc, kwargs.get("fmt", "text"))
            return 1

    return wrapper


def exit_code(result: object, detailed: bool = False) -> int:
    """Results as exit codes: 0 success, 1 an error or a failed change, 2 changes (only with `detailed`,
    i.e. `--detailed-exitcode`, and from `recon diff`)."""
    from reconciler import runner as r

    if isinstance(result, r.PlanResult):
        if result.plan.errors or result.plan.refused:    # a host not observed, or a change recon refuses
            return 1
        return 2 if detailed and result.plan.has_changes else 0
    if isinstance(result, r.ApplyRunResult | r.RollbackResult):
        return 1 if result.applied is not None and result.applied.failed else 0
    if isinstance(result, r.StatusResult):
        return 0 if result.ok else 1
    if isinstance(result, r.OperateResult):
        return 1 if result.failed else 0
    if isinstance(result, r.MetricsResult):
        return 1 if result.errors or any(m.error for m in result.services) else 0
    if isinstance(result, r.LogsResult | r.VersionsResult):
        return 1 if result.errors else 0
    review = sys.modules.get("reconciler.review.model")    # not loaded: the result is no diff (and stays cheap)
    if review is not None and isinstance(result, review.SpecDiff):
        return result.exit_code     # 0 no changes, 2 changes, 1 HEAD invalid or an error-level risk
    return 0


spec_option = click.option("-f", "--file", "files", multiple=True, required=True, metavar="SPEC",
                           type=click.Path(dir_okay=False), help=SPEC_HELP)
no_color_option = click.option("--no-color", is_flag=True, help="No colour (also when NO_COLOR is set).")


class TerminalUI:
    """An apply's operator on a terminal (or a CI log): the plan as text, a `yes` prompt, progress lines."""

    def __init__(self, color: bool, verbose: bool = False) -> None:
        from reconciler.render.progress import Progress

        self.color = color
        self.on_event = Progress(color, verbose)

    def show_plan(self, plan: Any) -> None:
        emit_plan(plan, "text", self.color)

    def confirm(self) -> None:
        if not sys.stdin.isatty():
            raise ReconError("apply needs confirmation: run it in a terminal, or pass --auto-approve")
        if click.prompt("\nDo you want to apply these changes? Only 'yes' will be accepted", default="",
                        show_default=False).strip() != "yes":
            raise ReconError("apply cancelled")
        click.echo()


class ReconGroup(click.Group):
    """The `recon` group: exit 1 for every usage error (click's own code, 2, means "changes" to CI under
    `--detailed-exitcode`), and a suggestion for a misspelt command."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: object) -> None:
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **extra)  # type: ignore[arg-type]
        except click.ClickException as exc:   # UsageError, BadParameter, NoSuchOption, …
            exc.show()
            sys.exit(1)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)   # a command's return value is its exit code

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                            list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            from reconciler.errors import did_you_mean

            ctx.fail(f"no such command {name!r}.{did_you_mean(name, self.list_commands(ctx))}")
        return super().resolve_command(ctx, args)


@click.group(cls=ReconGroup, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json for machines.")
@click.option("--skip-artifacts", is_flag=True, help="Do not check artifact files and checksums.")
@reports_errors
def validate(files: Sequence[str], fmt: str, skip_artifacts: bool) -> int:
    """Check spec files: schema, references, cycles, port clashes, units, artifacts.

    Every problem is reported in one run with its file, line, spec path, what was expected and
    what was found. Exit 0 when valid, 1 otherwise. No host is contacted.

    \b
    Example:
      recon validate -f specs/platform.yaml -f specs/overrides/local.yaml
    """
    from reconciler.render.validate import render_validate_json, render_validate_text
    from reconciler.runner import ValidateRequest, run_validate

    result = run_validate(ValidateRequest(tuple(files), check_artifacts=not skip_artifacts))
    click.echo(render_validate_json(result) if fmt == "json" else render_validate_text(result), nl=False)
    return exit_code(result)


@main.command()
@click.argument("address", metavar="SERVICE.PATH")
@spec_option
@reports_errors
def explain(address: str, files: Sequence[str]) -> int:
    """Show a value's final setting, the file and line that set it, and what it overrode.

    SERVICE.PATH is a service name and a dotted path inside it, e.g. `orchestrator.limits.memory_max`
    or `orchestrator.config.server.workers`; `hosts.NAME…` and `defaults.…` work too. Values that
    come from `defaults:` say so.

    \b
    Example:
      recon explain orchestrator.limits.memory_max -f specs/platform.yaml -f specs/overrides/local.yaml
    """
    from reconciler.explain import explain as do_explain

    click.echo(do_explain(files, address))
    return 0


state_option = click.option("--state", "state", metavar="DIR|URL", envvar=["RECON_STATE", "RECON_STATE_DIR"],
                            help="Where recon keeps state, history and locks: a directory (default ./state) or "
                                 "postgresql://USER@HOST:PORT/DB (the password from PGPASSWORD or ~/.pgpass, never "
                                 "printed). Env: RECON_STATE (a directory or a URL), RECON_STATE_DIR.")


def emit_plan(plan: Any, fmt: str, color: bool) -> None:
    """Print a plan in the chosen format (render.render)."""
    from reconciler.render import render

    out = render(plan, fmt, color)
    click.echo(out, nl=not out.endswith("\n"))


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
@reports_errors
def plan(files: Sequence[str], fmt: str, as_json: bool, out: str | None, detailed_exitcode: bool,
         targets: Sequence[str], hosts: Sequence[str], refresh_only: bool, state: str | None,
         no_color: bool) -> int:
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
    from reconciler.runner import PlanRequest, run_plan

    fmt = "json" if as_json else fmt
    result = run_plan(PlanRequest(tuple(files), state, tuple(targets), tuple(hosts), refresh_only, out))
    emit_plan(result.plan, fmt, use_color(no_color))
    if result.saved_to and fmt == "text":
        click.echo(f"\nSaved the plan to {result.saved_to}. "
                   f"Apply exactly this plan with: recon apply {result.saved_to}")
    return exit_code(result, detailed=detailed_exitcode)


@main.command()
@spec_option
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True,
              help="text for people, json for machines, markdown for pull requests.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 no drift, 1 error, 2 drift.")
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only this host. Repeatable.")
@state_option
@no_color_option
@click.pass_context
def drift(ctx: click.Context, files: Sequence[str], fmt: str, detailed_exitcode: bool, hosts: Sequence[str],
          state: str | None, no_color: bool) -> int:
    """Show only drift (same as `recon plan --refresh-only`), for scheduled CI checks.

    Drift is what changed on the hosts outside recon since it last applied: a hand-edited config or
    unit, a stopped service, a limit set at run time. Changes of the spec are not shown.

    \b
    Examples:
      recon drift -f specs/platform.yaml -f specs/overrides/prod.yaml
      recon drift -f … --detailed-exitcode --format markdown   # nightly CI: exit 2 on drift
    """
    return ctx.invoke(plan, files=files, fmt=fmt, as_json=False, out=None, detailed_exitcode=detailed_exitcode,
               targets=(), hosts=hosts, refresh_only=True, state=state, no_color=no_color)


@main.command()
@click.argument("planfile", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True,
              help="text for people, json for machines, markdown for pull requests.")
@no_color_option
@reports_errors
def show(planfile: str, fmt: str, no_color: bool) -> int:
    """Print a saved plan (from `recon plan -o PLANFILE`) in any format. No host is contacted.

    \b
    Examples:
      recon show release.plan
      recon show release.plan --format markdown > plan.md
    """
    from reconciler.planfile import load_plan

    emit_plan(load_plan(planfile), fmt, use_color(no_color))
    return 0


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
@reports_errors
def apply(planfile: str | None, files: Sequence[str], auto_approve: bool, targets: Sequence[str],
          hosts: Sequence[str], lock_timeout: float, no_rollback: bool, verbose: bool, state: str | None,
          no_color: bool) -> int:
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
    from reconciler.render.progress import print_summary
    from reconciler.runner import ApplyRequest, run_apply

    if bool(planfile) == bool(files):
        raise ReconError("give either -f SPEC… or a PLANFILE (from `recon plan -o`)")
    color = use_color(no_color)
    req = ApplyRequest(tuple(files), planfile, auto_approve, tuple(targets), tuple(hosts), lock_timeout,
                       auto_rollback=not no_rollback, state=state)
    result = run_apply(req, TerminalUI(color, verbose))
    if result.applied is None:
        if result.from_planfile:
            click.echo("No changes. Your hosts match the spec.")
    else:
        print_summary(result.applied, color)
    return exit_code(result)


@main.command()
@click.argument("service")
@spec_option
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only on this host (default: all its hosts).")
@click.option("--to", "to_version", metavar="VERSION", help="The kept release to go to (default: the previous one).")
@click.option("--lock-timeout", default=0.0, metavar="SECONDS", show_default=True,
              help="Wait this long for another apply's lock.")
@state_option
@no_color_option
@reports_errors
def rollback(service: str, files: Sequence[str], hosts: Sequence[str], to_version: str | None,
             lock_timeout: float, state: str | None, no_color: bool) -> int:
    """Undo SERVICE's last change: its last config-only apply, or its release, health-gated.

    Without --to: when the last apply changed the running release's config, unit or secrets in place,
    their earlier files come back; otherwise SERVICE switches to its previous release (binary, config and
    unit together). With --to: switch to that kept release. The next plan shows the spec's wish again.

    \b
    Examples:
      recon rollback orchestrator -f specs/platform.yaml
      recon rollback orchestrator -f specs/platform.yaml --to 5.0.0 --host node1
    """
    from reconciler.render.progress import Progress, print_summary
    from reconciler.runner import RollbackRequest, run_rollback

    color = use_color(no_color)
    req = RollbackRequest(tuple(files), service, tuple(hosts), to_version, lock_timeout, state)
    result = run_rollback(req, Progress(color))
    for line in result.already:
        click.echo(f"{line}.")
    if result.applied is not None:
        print_summary(result.applied, color, command="rollback")
    return exit_code(result)


@main.command()
@click.argument("service", required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json for machines.")
@click.option("-n", "--limit", default=50, show_default=True, help="Show the newest N entries.")
@state_option
@reports_errors
def history(service: str | None, fmt: str, limit: int, state: str | None) -> int:
    """What was applied, when, by whom, with what result (newest last).

    \b
    Examples:
      recon history                    # every service
      recon history control-center -n 10
      recon history --format json      # for scripts
    """
    import json

    from reconciler.render.history import render_history_text, render_skipped_lines
    from reconciler.runner import HistoryRequest, run_history

    result = run_history(HistoryRequest(service, limit, state))
    if result.skipped:
        click.echo(render_skipped_lines(result.skipped, result.path), err=True, nl=False)
    if fmt == "json":
        click.echo(json.dumps(result.entries, indent=2))
    elif not result.entries:
        click.echo("No history yet." if not service else f"No history for {service} yet.")
    else:
        click.echo(render_history_text(result.entries), nl=False)
    return exit_code(result)


@main.command()
@spec_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json for machines.")
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only this host. Repeatable.")
@state_option
@no_color_option
@reports_errors
def status(files: Sequence[str], fmt: str, hosts: Sequence[str], state: str | None, no_color: bool) -> int:
    """Per host and service: desired vs running version, systemd state, health, memory.

    Every host is read with one batched command. A host that cannot be reached lists each of its
    services as unreachable, with the reason. Exit 0 when every service is healthy on its desired
    version, 1 otherwise.

    \b
    Examples:
      recon status -f specs/platform.yaml -f specs/overrides/local.yaml
      recon status -f … --host node1 --format json
    """
    from reconciler.render.status import render_status_json, render_status_text
    from reconciler.runner import StatusRequest, run_status

    result = run_status(StatusRequest(tuple(files), tuple(hosts), state))
    out = render_status_json(result) if fmt == "json" else render_status_text(result, use_color(no_color))
    click.echo(out, nl=False)
    return exit_code(result)


@main.command()
@click.argument("services", nargs=-1, metavar="[SERVICE]...")
@spec_option
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only this host. Repeatable.")
@click.option("-n", "--lines", default=100, show_default=True, metavar="N",
              help="The newest N entries of each host (0: all).")
@click.option("--since", metavar="TIME", help='As journalctl reads it: "1 hour ago", "2026-12-02 04:00", "today".')
@click.option("-p", "--priority", metavar="PRIORITY",
              help="Only this priority and more urgent: err, warning, info… or 0–7, or a range warning..err.")
@click.option("--follow", is_flag=True, help="Keep reading every host's journal as it grows (Ctrl-C ends).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people; json: one object per line (time, host, service, priority, pid, message).")
@state_option
@no_color_option
@reports_errors
def logs(services: Sequence[str], files: Sequence[str], hosts: Sequence[str], lines: int, since: str | None,
         priority: str | None, follow: bool, fmt: str, state: str | None, no_color: bool) -> int:
    """The services' journals, read over SSH from every host at once.

    With no SERVICE, every service of the spec (the platform's "export all logs"). Lines name their
    host when more than one host is read. Exit 1 when a host could not be read.

    \b
    Examples:
      recon logs control-center -f specs/platform.yaml -n 50
      recon logs -f specs/platform.yaml --since "1 hour ago" -p err
      recon logs orchestrator -f … --follow
      recon logs -f … -n 0 --format json > platform-logs.jsonl
    """
    from reconciler.render.logs import render_log_json, render_log_text
    from reconciler.runner import LogsRequest, run_logs

    color = use_color(no_color)
    req = LogsRequest(tuple(files), tuple(services), tuple(hosts), lines, since, priority, follow, state)

    def show(entry: Any, several: bool) -> None:
        click.echo(render_log_json(entry) if fmt == "json" else render_log_text(entry, several, color))

    result = run_logs(req, on_entry=show)
    for entry in result.entries:
        show(entry, len(result.hosts) > 1)
    for error in result.errors:
        click.echo(f"Error: {error}", err=True)
    return exit_code(result)


@main.command()
@spec_option
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only this host. Repeatable.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json for machines.")
@state_option
@reports_errors
def versions(files: Sequence[str], hosts: Sequence[str], fmt: str, state: str | None) -> int:
    """The version each service runs, one `service: version` line each (the platform's own format).

    Where hosts differ, each version says where it runs; where the spec wants another, that is said
    too: `control-center: 5.0.1 (spec 5.0.0)`. Exit 1 when a host could not be read.

    \b
    Examples:
      recon versions -f specs/platform.yaml -f specs/overrides/local.yaml
      recon versions -f … --format json
    """
    from reconciler.render.versions import render_versions_json, render_versions_text
    from reconciler.runner import VersionsRequest, run_versions

    result = run_versions(VersionsRequest(tuple(files), tuple(hosts), state))
    click.echo(render_versions_json(result) if fmt == "json" else render_versions_text(result), nl=False)
    return exit_code(result)


@main.command()
@click.argument("services", nargs=-1, metavar="[SERVICE]...")
@spec_option
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only this host. Repeatable.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "prometheus"]), default="text",
              show_default=True, help="text for people, json for machines, prometheus: the text exposition "
              "with host and service labels (for a Prometheus server or promtool).")
@state_option
@reports_errors
def metrics(services: Sequence[str], files: Sequence[str], hosts: Sequence[str], fmt: str, state: str | None
            ) -> int:
    """Each service's Prometheus metrics, with systemd's figures beside them (CPU, memory, tasks, restarts).

    Every host is read with one command: each service's `metrics.http` (default
    http://127.0.0.1:{port}/metrics) and one `systemctl show`. Exit 1 when a host or an endpoint could
    not be read.

    \b
    Examples:
      recon metrics -f specs/platform.yaml -f specs/overrides/local.yaml
      recon metrics orchestrator -f … --format json
      recon metrics -f … --format prometheus > platform.prom
    """
    from reconciler.render.metrics import render_metrics_json, render_metrics_text
    from reconciler.runner import MetricsRequest, run_metrics

    result = run_metrics(MetricsRequest(tuple(files), tuple(services), tuple(hosts), state))
    if fmt == "prometheus":
        from reconciler.metrics import exposition

        out = exposition(result.services)
    else:
        out = render_metrics_json(result) if fmt == "json" else render_metrics_text(result)
    click.echo(out, nl=False)
    for e in result.errors:
        click.echo(f"Error: {e}", err=True)
    return exit_code(result)


@main.command()
@spec_option
@click.option("--title", default="Provisioning platform", show_default=True, help="The dashboard's title.")
@reports_errors
def dashboard(files: Sequence[str], title: str) -> int:
    """A Grafana dashboard for the platform, from the spec: one row per service with its series.

    The series are those `recon metrics --format prometheus` exposes (labels `host` and `service`): the
    platform's own and systemd's CPU, memory and restarts. Import the JSON in Grafana (Dashboards → New →
    Import); pick the Prometheus data source that scrapes them. No host is contacted.

    \b
    Example:
      recon dashboard -f specs/platform.yaml > platform.json
    """
    import json

    from reconciler.dashboard import dashboard as build
    from reconciler.spec import load_spec

    click.echo(json.dumps(build(load_spec(files, check_artifacts=False), title), indent=2))
    return 0


@main.command()
@spec_option
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only this host. Repeatable.")
@click.option("--interval", default=5.0, show_default=True, metavar="SECONDS", help="Seconds between ticks.")
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="End after N ticks (for scripts and tests).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: a live table on a terminal, a line per tick otherwise; json: one object per tick.")
@click.option("--alert-exec", metavar="CMD", help="Run CMD through the shell for each alert: the alert as JSON "
              "on stdin, RECON_ALERT_HOST, RECON_ALERT_SERVICE, RECON_ALERT_STATE, RECON_ALERT_KIND set.")
@click.option("--alert-webhook", metavar="URL", help="POST each alert as JSON to URL.")
@click.option("--alert-email", metavar="ADDR", help="Mail each alert to ADDR (with --smtp).")
@click.option("--smtp", metavar="HOST[:PORT]", help="The mail server for --alert-email (port 25 by default).")
@state_option
@no_color_option
@reports_errors
def watch(files: Sequence[str], hosts: Sequence[str], interval: float, count: int | None, fmt: str,
          alert_exec: str | None, alert_webhook: str | None, alert_email: str | None, smtp: str | None,
          state: str | None, no_color: bool) -> int:
    """Watch the platform: status every interval, with an alert on each transition.

    Each tick reads every host with one command, over SSH connections opened once. An alert fires once
    when a condition starts and once more when it ends: a service becomes unhealthy, stops or fails
    (also by hand), is restarted by systemd, runs another version than the spec's, or its host becomes
    unreachable. What is already wrong at the first tick fires then. Ctrl-C ends it (exit 0).

    \b
    Examples:
      recon watch -f specs/platform.yaml -f specs/overrides/local.yaml
      recon watch -f … --interval 10 --alert-webhook https://alerts.example/recon
      recon watch -f … --alert-email ops@example.com --smtp mail.example:25
      recon watch -f … --count 1 --format json        # one tick, for scripts
    """
    from reconciler.render.watch import WatchView
    from reconciler.runner import WatchRequest, run_watch

    view = WatchView(fmt, use_color(no_color))
    req = WatchRequest(tuple(files), tuple(hosts), interval, count, alert_exec, alert_webhook, alert_email, smtp,
                       state)
    try:
        run_watch(req, view)
    finally:
        view.close()
    return 0


def _operate(op: str, services: Sequence[str], files: Sequence[str], hosts: Sequence[str], all_services: bool,
             reason: str | None, yes: bool, lock_timeout: float, state: str | None, no_color: bool) -> int:
    from reconciler.outcome import Event, EventKind
    from reconciler.render.progress import Progress
    from reconciler.runner import OperateRequest, run_operate

    progress = Progress(use_color(no_color))

    def confirm(text: str) -> None:
        if not sys.stdin.isatty():
            raise ReconError(f"{text}: pass --yes to go on")
        if not click.confirm(f"{text}. Go on?", default=False):
            raise ReconError("cancelled")

    def on_event(host: str, service: str, ok: bool, detail: str) -> None:
        progress(Event(EventKind.OK if ok else EventKind.FAIL, host, service, detail))

    req = OperateRequest(op, tuple(files), tuple(services), tuple(hosts), all_services, reason, yes, lock_timeout,
                         state)
    result = run_operate(req, confirm, on_event)
    for e in result.errors:
        click.echo(f"Error: {e}", err=True)
    done = sum(o.ok for o in result.outcomes)
    click.echo(f"\n{op.capitalize()}: {done} of {len(result.outcomes)} done"
               + (f" ({', '.join(result.order)})" if result.order else "") + ".")
    return exit_code(result)


def _operate_command(op: str, summary: str, example: str) -> None:
    @click.argument("services", nargs=-1, metavar="[SERVICE]...")
    @spec_option
    @click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only this host. Repeatable.")
    @click.option("--all", "all_services", is_flag=True, help="Every service of the spec.")
    @click.option("--reason", metavar="TEXT", help="Why: kept in the history (and, for stop, shown by the plan).")
    @click.option("--yes", is_flag=True, help="Do not ask before touching dependents or dependencies too.")
    @click.option("--lock-timeout", default=0.0, metavar="SECONDS", show_default=True,
                  help="Wait this long for another apply's lock.")
    @state_option
    @no_color_option
    @reports_errors
    def command(services: Sequence[str], files: Sequence[str], hosts: Sequence[str], all_services: bool,
                reason: str | None, yes: bool, lock_timeout: float, state: str | None, no_color: bool) -> int:
        return _operate(op, services, files, hosts, all_services, reason, yes, lock_timeout, state, no_color)

    command.__doc__ = summary + f"""

    Takes the state lock and is recorded in the history (who, when, why).

    \b
    Examples:
      {example}
      recon {op} --all -f specs/platform.yaml --reason "maintenance window" --yes
    """
    main.command(op)(command)


_operate_command("stop", "Stop services, their dependents first (asking, or --yes), honouring stop.timeout_s.\n\n"
                 "    The next plan shows each as stopped by recon stop (user, time, reason), and `recon apply`\n"
                 "    starts it again unless the spec says run: stopped.",
                 'recon stop control-center -f specs/platform.yaml --reason "disk swap"')
_operate_command("start", "Start services, what they depend on first, each health-gated.",
                 "recon start control-center -f specs/platform.yaml")
_operate_command("restart", "Restart services in dependency order, health-gated like an apply; dependents keep "
                 "running.", "recon restart orchestrator -f specs/platform.yaml --reason \"new certificate\"")


@main.command("force-unlock")
@click.argument("lock_id", required=False)
@state_option
@reports_errors
def force_unlock(lock_id: str | None, state: str | None) -> int:
    """Remove the state lock left by an apply that is gone (give its lock id to be safe).

    A lock whose holder crashed on this machine is taken over by the next apply anyway; this is for a
    holder on another machine. The error of a locked apply prints the holder and its lock id.
    With PostgreSQL state, locks die with their holder's database session (a kill -9 frees them within
    seconds); force-unlock ends the holder's lock session (pg_terminate_backend) and drops its rows, so a
    holder still running stops before its next wave.

    \b
    Examples:
      recon force-unlock 0b7f6c1e-4a51-4c1f-9d0e-2f1f5a3c9e77
      recon force-unlock 0b7f6c1e-4a51-4c1f-9d0e-2f1f5a3c9e77 --state postgresql://recon@db.internal:5432/recon
    """
    from reconciler.runner import ForceUnlockRequest, run_force_unlock
    from reconciler.state import describe_holder

    holder = run_force_unlock(ForceUnlockRequest(lock_id, state))
    click.echo(f"Removed the lock held by {describe_holder(holder)}.")
    return 0


# ----------------------------------------------------------------------------- recon state (issue 11)
@main.group("state")
def state_group() -> None:
    """Show, back up, restore and move recon's state (a directory or PostgreSQL).

    \b
    Examples:
      recon state show --state postgresql://recon@db.internal:5432/recon
      recon state pull > backup.json                 # a backup of the state (the history stays)
      recon state push backup.json                   # restore it: same lineage, not older
      recon state migrate --state ./state --to postgresql://recon@db.internal:5432/recon
      recon state migrate --state postgresql://recon@db.internal:5432/recon --to ./state
    The password comes from PGPASSWORD or ~/.pgpass (libpq's PG* variables all work); it is never printed.
    """


@state_group.command("show")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json for machines.")
@state_option
@reports_errors
def state_show(fmt: str, state: str | None) -> int:
    """The state: lineage, serial, per host and service the recorded release and status, and the locks.
    Secrets are masked (the state holds only their salted fingerprint).

    \b
    Examples:
      recon state show
      recon state show --format json --state postgresql://recon@db.internal:5432/recon
    """
    from reconciler.render.state import render_state_json, render_state_text
    from reconciler.runner import StateShowRequest, run_state_show

    result = run_state_show(StateShowRequest(state))
    click.echo(render_state_json(result) if fmt == "json" else render_state_text(result), nl=False)
    return exit_code(result)


@state_group.command("pull")
@state_option
@reports_errors
def state_pull(state: str | None) -> int:
    """Print the state document (the format of a state directory's recon.state.json): a backup.

    \b
    Example:
      recon state pull --state postgresql://recon@db.internal:5432/recon > backup.json
    """
    from reconciler.runner import StatePullRequest, run_state_pull

    sys.stdout.buffer.write(run_state_pull(StatePullRequest(state)))
    sys.stdout.flush()
    return 0


@state_group.command("push")
@click.argument("file")
@click.option("--lock-timeout", default=0.0, metavar="SECONDS", show_default=True,
              help="Wait this long for another run's lock.")
@state_option
@reports_errors
def state_push(file: str, lock_timeout: float, state: str | None) -> int:
    """Restore a state document (from `recon state pull`, or a state directory). Refused when it is another
    lineage or older (a lower serial) than the stored state; takes the whole-state lock.

    \b
    Example:
      recon state push backup.json --state postgresql://recon@db.internal:5432/recon
    """
    from reconciler.render.state import render_push
    from reconciler.runner import StatePushRequest, run_state_push

    result = run_state_push(StatePushRequest(file, state, lock_timeout))
    click.echo(render_push(result, file), nl=False)
    return exit_code(result)


@state_group.command("migrate")
@click.option("--to", "to", required=True, metavar="DIR|URL", help="The target: a directory or a PostgreSQL URL.")
@click.option("--lock-timeout", default=0.0, metavar="SECONDS", show_default=True,
              help="Wait this long for another run's lock on the target.")
@state_option
@reports_errors
def state_migrate(to: str, lock_timeout: float, state: str | None) -> int:
    """Copy the state and its history from --state to --to (a directory or PostgreSQL, either way). Refused
    when the target holds another lineage, or this one at a newer serial; history already there is not
    copied twice. The source is left as it was.

    \b
    Examples:
      recon state migrate --state ./state --to postgresql://recon@db.internal:5432/recon
      recon state migrate --state postgresql://recon@db.internal:5432/recon --to ./state-backup
    """
    from reconciler.render.state import render_migrate
    from reconciler.runner import StateMigrateRequest, run_state_migrate

    result = run_state_migrate(StateMigrateRequest(to, state, lock_timeout))
    click.echo(render_migrate(result), nl=False)
    return exit_code(result)


@main.command()
@click.argument("base")
@click.argument("head")
@click.option("-f", "--file", "files", multiple=True, metavar="SPEC",
              help="Spec file path(s) read at BASE and at HEAD (git refs), or the layers under BASE and HEAD "
                   "(two files). Without -f, BASE and HEAD are two whole spec files.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True,
              help="text for people, json for machines, markdown for pull requests.")
@no_color_option
@reports_errors
def diff(base: str, head: str, files: Sequence[str], fmt: str, no_color: bool) -> int:
    """Review a spec change without touching any host: what changes per service, and what is risky.

    BASE and HEAD are git refs (the -f files are read at each ref; WORKTREE means the files on
    disk), or two files on disk. Two files with -f are two versions of one layer: the -f files
    are layered beneath them (or, when BASE or HEAD is among the -f files, that layer is swapped
    in place and the layers above it still apply). Two files without -f are two whole specs.
    Risky changes are flagged: a removed service others depend on, a dependency cycle, a port
    clash, an invalid spec, a major version bump or downgrade, lower memory limits.
    Exit 0 no changes, 2 changes, 1 invalid HEAD or an error-level risk.

    \b
    Examples:
      recon diff origin/main HEAD -f specs/platform.yaml --format markdown > diff.md
      recon diff HEAD WORKTREE -f specs/platform.yaml -f specs/overrides/prod.yaml
      recon diff local.yaml local-b.yaml -f specs/platform.yaml   # one layer, two versions
      recon diff old.yaml new.yaml
    """
    from reconciler.render import render_diff
    from reconciler.runner import DiffRequest, run_diff

    result = run_diff(DiffRequest(base, head, tuple(files)))
    out = render_diff(result, fmt, use_color(no_color))
    click.echo(out, nl=not out.endswith("\n"))
    return exit_code(result)


if __name__ == "__main__":  # pragma: no cover
    main()
