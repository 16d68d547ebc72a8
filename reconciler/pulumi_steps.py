"""recon's steps behind the Pulumi provider (`reconciler.pulumi`): the typed inputs, the spec files recon
reads for them, and validate / plan / apply / observe / destroy through the runner API. Nothing here
imports `pulumi`, so the process `reconciler.pulumi.isolated` spawns for a host step starts without it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import Origin, Problem, ReconError, SpecError
from reconciler.outcome import Result

INPUT_SPEC = "pulumi input spec"      # the "file" an inline `spec` input's problems are reported in
INPUT_HOSTS = "pulumi input hosts"    # and the `hosts` input's


class PlatformError(Exception):
    """A Platform step that failed; its text is recon's account (what failed, the rollback, the summary).
    A plain Exception subclass, so it crosses the process boundary of `isolated` and the gRPC error."""


class InputError(ReconError):
    """Malformed Platform inputs: (property, reason) per problem."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("invalid Platform inputs: " + "; ".join(f"{p}: {r}" for p, r in problems))
        self.problems = problems


# ------------------------------------------------------------------------------------ the inputs
@dataclass(frozen=True)
class PlatformInputs:
    """The `Platform` resource's inputs, normalised (secrets unwrapped, whole floats back to ints)."""

    spec_files: tuple[str, ...] = ()
    spec: dict[str, Any] | None = None
    hosts: dict[str, Any] | None = None
    state: str | None = None
    targets: tuple[str, ...] = ()

    def as_props(self) -> dict[str, Any]:
        return {"spec_files": list(self.spec_files), "spec": self.spec, "hosts": self.hosts, "state": self.state,
                "targets": list(self.targets)}

def whole_numbers(value: Any) -> Any:
    """Whole floats back to ints, at any depth. gRPC carries every number as a double, so a program's
    `8080` arrives as `8080.0`; where the schema wants an integer (ports, counts) that would be refused,
    and in free-form places (a service's `config`, `env`) it would reach the service as `8080.0` (a TOML
    float its server cannot bind). A number the schema takes as `number` (a duration) is the same value as
    an int. The one thing lost: a whole float written on purpose in an inline spec (`ratio: 2.0` becomes 2);
    spec files keep YAML's types."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value


def parse_inputs(props: dict[str, Any]) -> PlatformInputs:
    """The typed inputs of a property bag (secrets already unwrapped); InputError when malformed."""
    props = {k: v for k, v in props.items() if not k.startswith("__")}
    problems: list[tuple[str, str]] = []
    files = props.get("spec_files") or []
    spec = props.get("spec")
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        problems.append(("spec_files", "expected a list of spec file paths"))
        files = []
    if spec is not None and not isinstance(spec, dict):
        problems.append(("spec", "expected a mapping (an inline spec: version, hosts, services…)"))
        spec = None
    if not files and spec is None:
        problems.append(("spec", "spec_files or spec is required (the spec files, or an inline spec)"))
    if files and spec is not None:
        problems.append(("spec", "give spec_files or spec, not both"))
    hosts = props.get("hosts")
    if hosts is not None and not isinstance(hosts, dict):
        problems.append(("hosts", "expected a mapping of host name to {address, port, user, …}"))
        hosts = None
    state = props.get("state")
    if state is not None and not isinstance(state, str):
        problems.append(("state", "expected a string (a state directory, or a state URL)"))
        state = None
    targets = props.get("targets") or []
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        problems.append(("targets", "expected a list of service names"))
        targets = []
    if problems:
        raise InputError(problems)
    return PlatformInputs(tuple(files), whole_numbers(spec), whole_numbers(hosts), state or None, tuple(targets))

# -------------------------------------------------------------------- the spec files recon reads
def _artifact_paths_absolute(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """An inline spec's relative artifact paths are relative to the program's directory (the working
    directory), as if the spec were a file there; written to a temporary file, they are made absolute."""
    import copy

    spec = copy.deepcopy(spec)
    places = [spec.get("defaults"), *(spec.get("services") or {}).values()]
    for svc in places:
        art = svc.get("artifact") if isinstance(svc, dict) else None
        if isinstance(art, dict) and isinstance(art.get("path"), str) and art["path"]:
            p = Path(art["path"]).expanduser()
            if not p.is_absolute():
                art["path"] = str(base / p)
    return spec


@contextlib.contextmanager
def spec_files(inputs: PlatformInputs) -> Iterator[tuple[str, ...]]:
    """The spec files recon reads for these inputs: the `spec_files`, or the inline `spec` written to a
    private temporary file; then the `hosts` input as a layer over them. The temporary files are removed
    afterwards."""
    import json

    with tempfile.TemporaryDirectory(prefix="recon-pulumi-") as tmp:
        files = list(inputs.spec_files)
        layers: list[tuple[str, dict[str, Any]]] = []
        if inputs.spec is not None:
            layers.append(("spec.json", _artifact_paths_absolute(inputs.spec, Path.cwd())))
        if inputs.hosts:
            layers.append(("hosts.json", {"version": 1, "hosts": inputs.hosts}))
        for name, doc in layers:
            path = Path(tmp) / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
            files.append(str(path))
        yield tuple(files)


def spec_problems(inputs: PlatformInputs) -> list[tuple[str, Problem]]:
    """recon's validation of the inputs: (Pulumi property, problem) per problem. Inline inputs are read
    as the "files" `pulumi input spec` and `pulumi input hosts`, and their problems name the property path
    (`spec.services.api.port`); a file's problems name `spec_files` and carry file and line."""
    from reconciler.spec import check_merged
    from reconciler.spec.loader import Layer, load_file
    from reconciler.spec.merge import merge_layers

    layers: list[Layer] = []
    problems: list[Problem] = []
    for f in inputs.spec_files:
        try:
            layers.append(load_file(f))
        except SpecError as exc:
            problems += exc.problems
    for name, data in ((INPUT_SPEC, inputs.spec), (INPUT_HOSTS, {"hosts": inputs.hosts} if inputs.hosts else None)):
        if data is not None:
            layers.append(_input_layer(name, data))
    if not problems:
        merged = merge_layers(layers)
        problems = check_merged(merged)
        if not problems:
            from reconciler.spec.model import build_spec

            spec = build_spec(merged)
            for t in inputs.targets:
                if t not in spec.services:
                    from reconciler.errors import did_you_mean

                    problems.append(Problem(f"no service {t!r} in the spec.{did_you_mean(t, spec.services)}",
                                            origin=Origin("targets", 0)))
    out = []
    for p in problems:
        file = p.origin.file if p.origin else ""
        if file == INPUT_SPEC or (inputs.spec is not None and file not in (INPUT_HOSTS, "targets")):
            prop = "spec" + (f".{p.path}" if p.path else "")
        elif file == INPUT_HOSTS:
            prop = p.path or "hosts"
        elif file == "targets":
            prop = "targets"
        else:
            prop = "spec_files"
        out.append((prop, p))
    return out


def _input_layer(name: str, data: dict[str, Any]) -> Any:
    """An inline input as a spec layer: every value's origin is the input itself (no line: there is no file)."""
    from reconciler.spec.loader import Layer

    origins: dict[tuple[str | int, ...], Origin] = {}

    def walk(v: Any, path: tuple[str | int, ...]) -> None:
        origins[path] = Origin(name, 0, 0, path)
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, (*path, k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, (*path, i))

    walk(data, ())
    return Layer(name, data, origins)


# ---------------------------------------------------------------------------------- recon's runs
class _CollectingUI:
    """The runner's ApplyUI for Pulumi: no terminal, no question (`pulumi up` was the confirmation);
    the plan and the events are kept for the outputs and for the error text of a failed apply."""

    def __init__(self) -> None:
        self.plan: Any = None
        self.events: list[Any] = []

    def show_plan(self, plan: Any) -> None:
        self.plan = plan

    def confirm(self) -> None:
        return None

    def on_event(self, event: Any) -> None:
        self.events.append(event)


def _error_text(err: Exception, ui: _CollectingUI | None = None) -> str:
    """recon's own message; for a refused or unobservable plan, the reasons from the plan too."""
    text = str(err)
    plan = ui.plan if ui is not None else None
    if plan is not None:
        more = [str(e) for e in plan.errors] + list(plan.refused)
        if more:
            text += "\n  " + "\n  ".join(more)
    return text


def apply(inputs: PlatformInputs) -> dict[str, Any]:
    """recon apply, health-gated with automatic rollback; the outputs. A failed apply raises a PlatformError
    whose text is recon's account of it: each failed or rolled-back service, then the summary line."""
    from reconciler.outcome import ApplyResult
    from reconciler.render.progress import summary_line
    from reconciler.runner import ApplyRequest, run_apply

    ui = _CollectingUI()
    with spec_files(inputs) as files:
        req = ApplyRequest(files=files, auto_approve=True, targets=inputs.targets, auto_rollback=True,
                           state=inputs.state)
        try:
            result = run_apply(req, ui)
        except ReconError as exc:
            raise PlatformError(f"recon apply failed: {_error_text(exc, ui)}") from None
        applied = result.applied or ApplyResult()
        if applied.failed:
            bad = [f"{o.address}: {o.result} — {o.detail}" for o in applied.outcomes
                   if o.result in (Result.FAILED, Result.ROLLED_BACK, Result.SKIPPED)]
            lines = ["recon apply failed:", *bad]
            if applied.stopped:
                lines.append(f"Rollout stopped: {applied.stopped}")
            lines.append(summary_line(applied))
            raise PlatformError("\n".join(lines))
        outs = observe(inputs, files)
    outs["summary"] = summary_line(applied)
    return outs


def destroy(inputs: PlatformInputs) -> str:
    """recon's delete path for the inputs' services (`runner.run_destroy`); the summary line. A failure
    raises a PlatformError with recon's account of it."""
    from reconciler.outcome import ApplyResult
    from reconciler.render.progress import summary_line
    from reconciler.runner import DestroyRequest, run_destroy

    ui = _CollectingUI()
    with spec_files(inputs) as files:
        try:
            result = run_destroy(DestroyRequest(files=files, services=inputs.targets, state=inputs.state), ui)
        except ReconError as exc:
            raise PlatformError(f"recon delete failed: {_error_text(exc, ui)}") from None
    applied = result.applied or ApplyResult()
    if applied.failed:
        bad = [f"{o.address}: {o.result} — {o.detail}" for o in applied.outcomes if o.result != Result.DELETED]
        raise PlatformError("\n".join(["recon delete failed:", *bad, summary_line(applied)]))
    return summary_line(applied)


def observe(inputs: PlatformInputs, files: Sequence[str]) -> dict[str, Any]:
    """The outputs read from the hosts (`recon versions`) and recon's state: versions, serial, lineage."""
    from reconciler import pipeline
    from reconciler.pipeline import with_dependencies
    from reconciler.runner import VersionsRequest, run_versions

    try:
        result = run_versions(VersionsRequest(files=tuple(files), state=inputs.state))
        run = pipeline.prepare(files, inputs.state, secrets=False)
    except ReconError as exc:
        raise PlatformError(f"recon: {exc}") from None
    if result.errors:
        raise PlatformError("recon: cannot observe the hosts: " + "; ".join(result.errors))
    versions: dict[str, dict[str, str | None]] = {}
    wanted = with_dependencies(run.spec, inputs.targets) if inputs.targets else None
    for sv in result.services:
        if wanted is not None and sv.service not in wanted:
            continue
        for host, running in sv.running.items():
            versions.setdefault(host, {})[sv.service] = running
    return {"versions": versions, "serial": run.state.serial, "lineage": run.state.lineage}


def plan(inputs: PlatformInputs) -> Any:
    """recon plan for the inputs (observes the hosts, changes nothing)."""
    from reconciler.runner import PlanRequest, run_plan

    with spec_files(inputs) as files:
        try:
            return run_plan(PlanRequest(files=files, state=inputs.state, targets=inputs.targets)).plan
        except ReconError as exc:
            raise PlatformError(f"recon plan failed: {exc}") from None

def diff(inputs: PlatformInputs, before: PlatformInputs | None) -> tuple[bool, list[str], str]:
    from reconciler.render.common import summary_line

    p = plan(inputs)
    if p.errors or p.refused:
        raise PlatformError("recon plan: " + "; ".join([str(e) for e in p.errors] + list(p.refused)))
    return bool(p.changes) or before != inputs, sorted({c.service for c in p.changes}), summary_line(p)


def read(inputs: PlatformInputs) -> dict[str, Any]:
    with spec_files(inputs) as files:
        return observe(inputs, files)
