"""recon as a Pulumi resource: `Platform`, backed by the dynamic provider `PlatformProvider`, whose
check/diff/create/update/read/delete are recon's own validation, plan, apply (health-gated, with
automatic rollback), observation and delete path, through the typed runner API (`runner.run_*`).

The only module that imports `pulumi` (an optional extra: `pip install 'recon[pulumi]'`); `recon` itself
never imports it, nor does `pulumi_steps`, recon's side of each step. The provider is dill-pickled into
Pulumi's state by reference (this module's path), holds no connections and no secrets, and accepts
inputs as they cross the gRPC boundary: numbers as floats (8080.0), unknowns during a preview, secrets
wrapped. See docs/pulumi.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
from pulumi.runtime import rpc

from reconciler import pulumi_steps as steps
from reconciler.pulumi_steps import INPUT_HOSTS, INPUT_SPEC, InputError, PlatformError, PlatformInputs

__all__ = ["INPUTS_KEY", "INPUT_HOSTS", "INPUT_SPEC", "InputError", "Platform", "PlatformDiff", "PlatformError",
           "PlatformInputs", "PlatformProvider", "isolated", "parse_inputs", "stored_inputs", "unwrap"]

INPUTS_KEY = "__inputs"               # the inputs delete and refresh need, kept (as a secret) in the outputs
OUTPUTS = ("versions", "serial", "summary")
_SECRET_SIG = {rpc._special_sig_key: rpc._special_secret_sig}


def unwrap(value: Any) -> Any:
    """The value with every Pulumi secret wrapper (`{sig: secret, value: …}`) removed, at any depth."""
    value = rpc.unwrap_rpc_secret(value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unwrap(v) for v in value]
    return value


def has_unknowns(value: Any) -> bool:
    """Whether a value (during a preview) holds an output not known yet, e.g. a VM's address."""
    from pulumi.output import Unknown

    if isinstance(value, Unknown) or value == rpc.UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(has_unknowns(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_unknowns(v) for v in value)
    return False


def parse_inputs(props: dict[str, Any]) -> PlatformInputs:
    """The typed inputs of a property bag as Pulumi hands it over (secrets unwrapped first)."""
    return steps.parse_inputs(unwrap(props))


def _outputs(outs: dict[str, Any], inputs: PlatformInputs) -> dict[str, Any]:
    """The resource's outputs: versions, serial, summary, and (as a Pulumi secret, so it is encrypted in
    the state and never shown) the inputs a later delete or refresh needs. No secret value is in any
    of them: recon's spec names its secrets (from_env, from_file) and reads them only at apply time."""
    return {"versions": outs["versions"], "serial": outs["serial"], "summary": outs.get("summary", ""),
            INPUTS_KEY: {**_SECRET_SIG, "value": inputs.as_props()}}


def stored_inputs(props: dict[str, Any]) -> PlatformInputs:
    """The inputs kept in a resource's outputs (delete and read get only those), else the props themselves."""
    kept = unwrap(props.get(INPUTS_KEY))
    return parse_inputs(kept if isinstance(kept, dict) else props)


def isolated(fn: Any, *args: Any) -> Any:
    """`fn(*args)`, in a fresh process unless this is the main thread. recon reaches hosts through
    pyinfra, which needs gevent's monkey-patching, and that must happen on a process's main thread
    (patching while a gRPC worker thread imports a module breaks the import lock, and gevent's locks
    under the gRPC server's threads would break it too). `python -m pulumi.dynamic` calls the provider on
    its gRPC threads, so there each call that contacts hosts runs in a spawned process (one Python
    start and recon's imports more, not pulumi's: docs/performance.md): the same runner API, the same
    environment and working directory; the result or the error comes back pickled. Called directly on
    a main thread (a script, the tests), it runs in place."""
    import threading

    if threading.current_thread() is threading.main_thread():
        return fn(*args)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()

# -------------------------------------------------------------------------------- the provider
class PlatformDiff(dynamic.DiffResult):
    """A DiffResult that also names the changed services (`diffs`) and carries recon's plan summary."""

    def __init__(self, changes: bool | None, diffs: list[str], summary: str = "") -> None:
        super().__init__(changes=changes, replaces=[], delete_before_replace=False)
        self.diffs = diffs
        self.summary = summary


class PlatformProvider(dynamic.ResourceProvider):
    """check → recon's validation; diff → recon's plan; create/update → recon's apply; read → recon's
    observation; delete → recon's delete path for services no longer in the spec."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.CheckResult:
        if has_unknowns({k: v for k, v in news.items() if not k.startswith("__")}):
            return dynamic.CheckResult(news, [])     # a preview before the hosts exist: checked at `up`
        try:
            inputs = parse_inputs(news)
        except InputError as exc:
            return dynamic.CheckResult(news, [dynamic.CheckFailure(p, r) for p, r in exc.problems])
        failures = [dynamic.CheckFailure(prop, p.render()) for prop, p in steps.spec_problems(inputs)]
        # the inputs as recon reads them (ints again) become the stored inputs; a secret one stays wrapped
        plain = {k: v for k, v in inputs.as_props().items() if k in news and not rpc.is_rpc_secret(news[k])}
        return dynamic.CheckResult({**news, **plain}, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> PlatformDiff:
        if has_unknowns({k: v for k, v in news.items() if not k.startswith("__")}):
            return PlatformDiff(True, [], "known after apply")
        inputs = parse_inputs(news)
        try:
            before: PlatformInputs | None = stored_inputs(olds)
        except InputError:
            before = None
        changes, services, summary = isolated(steps.diff, inputs, before)
        return PlatformDiff(changes, services, summary)

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        inputs = parse_inputs(props)
        outs = isolated(steps.apply, inputs)
        return dynamic.CreateResult(outs["lineage"], _outputs(outs, inputs))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        inputs = parse_inputs(news)
        return dynamic.UpdateResult(_outputs(isolated(steps.apply, inputs), inputs))

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        inputs = stored_inputs(props)
        outs = isolated(steps.read, inputs)
        outs["summary"] = unwrap(props.get("summary")) or ""
        return dynamic.ReadResult(id_, _outputs(outs, inputs))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Remove the spec's services (with `targets`: the targeted ones; the dependencies they pulled in
        stay) from the hosts: recon's delete path, as if they were taken out of the spec, so only what
        recon recorded creating goes and everything else is left alone."""
        isolated(steps.destroy, stored_inputs(props))


# -------------------------------------------------------------------------------- the resource
class Platform(dynamic.Resource, module="recon", name="Platform"):
    """The platform's services on hosts, as one Pulumi resource: `pulumi preview` shows recon's plan,
    `pulumi up` applies it (health-gated, automatic rollback), `pulumi destroy` removes the services."""

    versions: pulumi.Output[dict[str, dict[str, str | None]]]   # None: the service does not run
    serial: pulumi.Output[int]
    summary: pulumi.Output[str]

    def __init__(self, name: str, *, spec_files: pulumi.Input[Sequence[str]] | None = None,
                 spec: pulumi.Input[dict[str, Any]] | None = None, hosts: pulumi.Input[dict[str, Any]] | None = None,
                 state: pulumi.Input[str] | None = None, targets: pulumi.Input[Sequence[str]] | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        props: dict[str, Any] = {"spec_files": spec_files, "spec": spec, "hosts": hosts, "state": state,
                                 "targets": targets, **dict.fromkeys(OUTPUTS)}
        super().__init__(PlatformProvider(), name, props, opts)
