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


def run() -> None:  # pragma: no cover - entry point for python -m
    main()


if __name__ == "__main__":  # pragma: no cover
    run()
