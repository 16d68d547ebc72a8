"""Imperative `recon start|stop|restart`: which services, in which order (pure: `order`), and carrying it
out over SSH under the state lock, recorded in the state and the history (`Operator`).

- stop: the services and, first, everything that depends on them (dependents before dependencies);
  each stopped service records who stopped it, when and why, so the next plan says so.
- start: the services and, first, what they depend on, each health-gated before the next.
- restart: the services themselves, in dependency order, health-gated like an apply (dependents keep
  running)."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler import hostscripts as hs
from reconciler.plan import Effect
from reconciler.spec import Spec
from reconciler.state import current_user, now_iso
from reconciler.waves import waves


class Op(StrEnum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"


DONE = {Op.START: "started", Op.STOP: "stopped", Op.RESTART: "restarted"}


def _closure(names: set[str], edges: Callable[[str], Sequence[str]]) -> set[str]:
    out, todo = set(names), list(names)
    while todo:
        for n in edges(todo.pop()):
            if n not in out:
                out.add(n)
                todo.append(n)
    return out


def order(spec: Spec, names: Sequence[str], op: Op) -> tuple[list[str], list[str]]:
    """(every service the operation touches, in the order it goes; those added beyond `names`)."""
    wanted = set(names)
    if op == Op.STOP:
        dependents = {n: [s for s, svc in spec.services.items() if n in svc.depends_on] for n in spec.services}
        touched = _closure(wanted, lambda n: dependents[n])
    elif op == Op.START:
        touched = _closure(wanted, lambda n: [d for d in spec.services[n].depends_on if d in spec.services])
    else:
        touched = wanted
    ordered = [n for wave in waves(spec) for n in wave if n in touched]
    if op == Op.STOP:
        ordered.reverse()
    return ordered, [n for n in ordered if n not in wanted]


@dataclass
class OpOutcome:
    host: str
    service: str
    ok: bool
    detail: str


class Operator:
    """Carries out one start/stop/restart on the hosts of an open session (hosts in parallel, services in
    order on each host); `on_event(host, service, ok, detail)` hears each step as it ends."""

    def __init__(self, run: Any, session: Any, op: Op, reason: str | None, on_event: Callable[..., None]) -> None:
        from gevent.lock import RLock

        from reconciler.recorder import Recorder

        self.run, self.session, self.op, self.reason, self.on_event = run, session, op, reason, on_event
        self.recorder = Recorder(run.store, run.state, run.salt, command=f"recon {op}", lock=RLock())
        self.outcomes: list[OpOutcome] = []

    def host(self, host: str, services: list[str]) -> None:
        for name in services:
            d = self.run.desired[host][name]
            refused = self.externals_refusal(host, name) if self.op != Op.STOP else None
            if refused:
                ok, detail = False, refused
            elif self.op == Op.STOP:
                res = self.session.run(host, f"systemctl stop {shlex.quote(d.unit_name)} 2>&1; "
                                             f"systemctl is-active -q {shlex.quote(d.unit_name)} && exit 1; exit 0")
                ok, detail = res.ok, "stopped" if res.ok else f"still active: {(res.stdout + res.stderr).strip()}"
            else:
                script = (hs.bounce_script([(d, Effect.RESTART)]) if self.op == Op.RESTART else  # a running one:
                          "\n".join([hs.HEALTH_FN, f"systemctl start {shlex.quote(d.unit_name)} 2>/dev/null || true",
                                     hs.check_line(d)]))                                 # left as it is
                res = self.session.run(host, script, timeout=hs.bounce_timeout([d]))
                ok, detail = hs.parse_results(res.stdout).get(name, (False, res.stderr.strip() or "no result"))
                detail = f"{DONE[self.op]}, healthy ({detail})" if ok else f"health check failed: {detail}"
            self.record(host, name, ok, detail)
            self.outcomes.append(OpOutcome(host, name, ok, detail))
            self.on_event(host, name, ok, detail)
            if not ok:              # later services may depend on this one: stop here on this host
                return

    def externals_refusal(self, host: str, name: str) -> str | None:
        """Why SERVICE must not be started on HOST (an `external:` it depends on is unhealthy), or None: the
        externals are probed first, so recon never starts a dependent of an external that is down (and
        systemd's `Wants=` never starts the external along with it)."""
        from reconciler import external

        spec = self.run.spec
        needed = external.needed_on(host, [spec.services[name]], spec.externals)
        if not needed:
            return None
        res = self.session.run(host, external.probe_script(needed, host), timeout=30)
        bad = [h for h in external.parse_probe(res.stdout, needed, host).values() if not h.ok]
        return external.refusal(name, bad) if bad else None

    def record(self, host: str, name: str, ok: bool, detail: str) -> None:
        if ok:
            by = {"user": current_user(), "time": now_iso(), "reason": self.reason or ""}
            self.recorder.note(host, name, stopped_by=by if self.op == Op.STOP else None)
        rec = self.run.state.record(host, name)
        why = f"reason: {self.reason}" if self.reason else ""
        self.recorder.history_entry(host, name, str(self.op), None, rec.version if rec else None,
                                    DONE[self.op] if ok else "failed", "; ".join(x for x in (detail, why) if x))
