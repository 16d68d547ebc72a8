"""Runs the pipeline for a command: spec → desired → observe → plan, gathering what apply needs.

This module wires stages together and owns the edges (reading secrets, the state store, opening
and closing host connections); each stage it calls stays pure or single-purpose.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import ReconError, SpecError, unknown_name
from reconciler.spec import Spec, load_spec
from reconciler.spec.checks import ssh_key_problems
from reconciler.spec.model import Host, Secret
from reconciler.state import State, StateBackend
from reconciler.state import open_store as _open_store

if TYPE_CHECKING:   # desired, observe and plan are imported when used: after an early connect has started
    from reconciler.desired import DesiredService
    from reconciler.observe import ObservedHost, Target
    from reconciler.plan import Plan

DEFAULT_STATE_DIR = "state"


def state_dir(option: str | None) -> Path:
    return Path(option or os.environ.get("RECON_STATE_DIR") or DEFAULT_STATE_DIR)


def state_location(option: str | None) -> str:
    """`--state`, else RECON_STATE, else RECON_STATE_DIR, else ./state: a directory or a PostgreSQL URL."""
    return option or os.environ.get("RECON_STATE") or os.environ.get("RECON_STATE_DIR") or DEFAULT_STATE_DIR


def open_store(option: str | None) -> StateBackend:
    return _open_store(state_location(option))


def secret_lookup(name: str, secret: Secret) -> str:
    """Read a secret's value from the environment or a file; never logged."""
    if secret.from_env:
        value = os.environ.get(secret.from_env)
        if value is None:
            raise ReconError(f"secret {name}: environment variable {secret.from_env} is not set "
                             "(recon reads secrets at plan and apply time and never stores them)")
        return value
    path = Path(os.path.expanduser(secret.from_file or ""))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReconError(f"secret {name}: cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReconError(f"secret {name}: {path} is not valid UTF-8 (systemd's EnvironmentFile= cannot carry "
                         "it); nothing was changed (the value is not shown)") from None
    return text[:-1] if text.endswith("\n") else text   # the file's one final newline is not part of it


def with_dependencies(spec: Spec, names: Iterable[str]) -> set[str]:
    """The named services and everything they depend on, transitively."""
    out: set[str] = set()
    todo = list(names)
    for n in todo:
        if n not in spec.services:
            raise unknown_name("service", n, spec.services, where=f"the spec (--target {n})")
    while todo:
        n = todo.pop()
        if n in out:
            continue
        out.add(n)
        todo.extend(spec.services[n].depends_on)
    return out


def build_targets(desired: dict[str, dict[str, DesiredService]], state: State) -> dict[str, list[Target]]:
    """What to observe per host: the desired services, and services recon applied there before."""
    from reconciler.observe import Target
    from reconciler.ownership import dirs_of

    out: dict[str, list[Target]] = {}
    for host, svcs in desired.items():
        ts = [Target(d.service, d.service_dir, d.config_path, d.unit_name, d.env_path, d.version, d.health_url,
                     d.user, d.group, tuple(s.path for s in dirs_of(d)), tree=d.entrypoint is not None,
                     health_expect=d.health_expect_json)
              for d in svcs.values()]
        for name, rec in state.hosts.get(host, {}).items():
            if name not in svcs:
                ts.append(Target(name, rec.service_dir, rec.config_path, rec.unit_name, rec.env_path))
        out[host] = ts
    return out


@dataclass
class Run:
    """Everything a plan was made from; apply continues from it."""

    spec: Spec
    store: StateBackend
    state: State
    salt: str
    desired: dict[str, dict[str, DesiredService]]
    observed: dict[str, ObservedHost] = field(default_factory=dict)
    plan: Plan | None = None
    targets: set[str] | None = None
    hosts: set[str] | None = None
    early: Any = None      # an OpenSSH session already logging in (`prepare(connect_early=True)`)


def prepare(files: Sequence[str], state_option: str | None, targets: Sequence[str] = (),
            hosts: Sequence[str] = (), lineage: str | None = None, services: Sequence[str] = (),
            secrets: bool = True, connect_early: bool = False, store: StateBackend | None = None,
            spec: Spec | None = None) -> Run:
    """Load and check the spec (or take `spec`, already loaded from `files`), render desired state, read
    recon's state. No host is contacted, and nothing is written: without a state yet, the lineage (the
    salt of secret fingerprints) is made up in memory, or taken from `lineage` (a saved plan's), and kept
    by the first write of an apply.

    Names given on the command line (`services`, `--target`, `--host`) are checked before anything
    else is read (secrets included), with the closest names suggested."""
    store = store or open_store(state_option)     # apply passes the store that holds its lock
    if hasattr(store, "prefetch"):
        store.prefetch()                          # PostgreSQL: the state is read while the spec loads
    if spec is None:
        spec = load_spec(files)
    for name in services:
        if name not in spec.services:
            raise unknown_name("service", name, spec.services)
    for h in hosts:
        if h not in spec.hosts:
            raise unknown_name("host", h, spec.hosts, where=f"the spec (--host {h})")
    wanted = with_dependencies(spec, targets) if targets else None
    used = {h for svc in spec.services.values() for h in svc.hosts if not hosts or h in hosts}
    key_problems = ssh_key_problems(spec.merged, {h: spec.hosts[h] for h in spec.hosts if h in used})
    if key_problems:
        raise SpecError(key_problems)
    early = None
    if connect_early:
        from reconciler.openssh import connect_early as start

        early = start({h: spec.hosts[h] for h in sorted(used)})
    try:
        from reconciler.desired import archive_digest, desired_state

        state = store.load()
        salt = state.lineage or lineage or str(uuid.uuid4())
        state.lineage = salt          # the first apply keeps the lineage its fingerprints were salted with
        desired = desired_state(spec, secret_lookup if secrets else None,   # read-outs need no secret values
                                archive_digest)
    except BaseException:
        if early is not None:
            early.close()
        raise
    return Run(spec, store, state, salt, desired, targets=wanted, hosts=set(hosts) if hosts else None, early=early)


def hosts_in_scope(run: Run) -> dict[str, Host]:
    """The spec hosts this run observes (all, or those of `--host`)."""
    return {h: run.spec.hosts[h] for h in run.desired if run.hosts is None or h in run.hosts}


def observe(run: Run, session: Any | None = None, warm: Sequence[str] = (), externals: bool = False
            ) -> dict[str, ObservedHost]:
    """Observe the hosts in scope (one batched command each), opening a session unless given one: the
    read-only OpenSSH session (`openssh.observe_session`); apply passes its pyinfra session. The modules
    named in `warm` are imported while the hosts answer (what the caller needs next). `externals`: probe
    the spec's `external:` entries in the same command (status, watch)."""
    from reconciler.observe import observe_hosts
    from reconciler.openssh import observe_session

    scope = hosts_in_scope(run)
    targets = {h: ts for h, ts in build_targets(run.desired, run.state).items() if h in scope}
    extra = external_probes(run.spec, scope) if externals else {}
    early, run.early = run.early, None
    if session is not None:
        if early is not None:
            early.close()
        run.observed = observe_hosts(session, targets, run.salt, extra)
        return run.observed
    if early is not None and set(early.hosts) == set(scope):
        def warm_up() -> None:
            for module in warm:
                importlib.import_module(module)

        early.while_waiting = warm_up
        try:
            run.observed = observe_hosts(early, targets, run.salt, extra)
        finally:
            early.close()
        return run.observed
    if early is not None:
        early.close()
    with observe_session(scope) as s:
        run.observed = observe_hosts(s, targets, run.salt, extra)
    return run.observed


def external_probes(spec: Spec, hosts: Iterable[str]) -> dict[str, str]:
    """host → the read-only probe of the `external:` entries it shows (those on it, or that its services need)."""
    if not spec.externals:
        return {}
    from reconciler.external import probe_script, shown_from

    out = {}
    for h in hosts:
        shown = shown_from(h, spec.services.values(), spec.externals)
        if shown:
            out[h] = probe_script(shown, h)
    return out


def plan(run: Run, refresh_only: bool = False) -> Plan:
    from reconciler.plan import make_plan

    p = make_plan(run.desired, run.observed, run.state, run.salt, refresh_only=refresh_only,
                  targets=run.targets, hosts=run.hosts)
    p.spec_files = list(run.spec.files)
    p.fingerprints = fingerprints(run)
    run.plan = p
    return p


def _digest(text: str | None) -> str | None:
    from reconciler.desired import sha256_text

    return None if text is None else sha256_text(text)[:16]


def fingerprints(run: Run) -> dict[str, Any]:
    """What a saved plan pins, per host and service, as short comparable values: the desired release
    (version, artifact, config, unit, salted secrets) and the observed facts the plan was made from
    (`ObservedService.fingerprint`, texts as digests), plus the state's serial and lineage."""
    return {
        "spec": {h: {n: {"version": d.version, "artifact": d.sha256[:16], "config": _digest(d.config_text),
                         "unit": _digest(d.unit_text), "secrets": d.secrets_hash(run.salt)}
                     for n, d in sorted(svcs.items())} for h, svcs in sorted(run.desired.items())},
        "hosts": {h: {n: {k: _digest(v) if k in ("config", "unit") else v for k, v in s.fingerprint().items()}
                      for n, s in sorted(o.services.items())}
                  for h, o in sorted(run.observed.items()) if o.ok},
        "state_serial": run.state.serial,
        "lineage": run.salt,
    }
