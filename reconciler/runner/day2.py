"""The day-2 commands: status, history, diff, versions, metrics, watch, start/stop/restart/reload, logs
and force-unlock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.errors import ReconError, unknown_name
from reconciler.runner.scope import lock_scope

if TYPE_CHECKING:
    from reconciler.review.model import SpecDiff


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
class VersionsRequest:
    files: tuple[str, ...]
    hosts: tuple[str, ...] = ()
    state: str | None = None


@dataclass(frozen=True)
class MetricsRequest:
    files: tuple[str, ...]
    services: tuple[str, ...] = ()   # none: every service of the spec
    hosts: tuple[str, ...] = ()
    state: str | None = None


@dataclass(frozen=True)
class WatchRequest:
    files: tuple[str, ...]
    hosts: tuple[str, ...] = ()
    interval: float = 5.0            # seconds from the start of one tick to the start of the next
    count: int | None = None         # end after N ticks (None: until interrupted)
    alert_exec: str | None = None    # a shell command: the alert as JSON on stdin, RECON_ALERT_* in its env
    alert_webhook: str | None = None
    alert_email: str | None = None
    smtp: str | None = None          # HOST[:PORT] for alert_email
    state: str | None = None


@dataclass(frozen=True)
class OperateRequest:
    op: str                          # operate.Op: start, stop, restart
    files: tuple[str, ...]
    services: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    all_services: bool = False
    reason: str | None = None
    yes: bool = False                # stop dependents (or start dependencies) without asking
    lock_timeout: float = 0.0
    state: str | None = None


@dataclass(frozen=True)
class LogsRequest:
    files: tuple[str, ...]
    services: tuple[str, ...] = ()   # none: every service of the spec
    hosts: tuple[str, ...] = ()
    lines: int = 100                 # the newest N entries (0: all)
    since: str | None = None         # as journalctl reads it: "1 hour ago", "2026-12-02 04:00"
    priority: str | None = None      # err, warning..err, 3
    follow: bool = False
    state: str | None = None


@dataclass(frozen=True)
class ForceUnlockRequest:
    lock_id: str | None = None
    state: str | None = None


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
    run: str = "running"       # the spec's `run`: a `stopped` service is fine when it does not run
    external: bool = False     # an `external:` entry: not managed by recon (state: its unit's, or `-`)

    @property
    def on_desired(self) -> bool:
        return self.running == self.desired or (self.run == "stopped" and self.running is None) or self.external


@dataclass
class StatusResult:
    rows: list[StatusRow]
    errors: list[str]
    externals: list[StatusRow] = field(default_factory=list)   # `external:` entries, per host that shows them

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.healthy and r.on_desired for r in [*self.rows, *self.externals])


@dataclass
class ServiceVersions:
    service: str
    desired: str
    running: dict[str, str | None]   # host → the version its process runs (None: not running)

    @property
    def versions(self) -> set[str | None]:
        return set(self.running.values())


@dataclass
class VersionsResult:
    services: list[ServiceVersions]
    errors: list[str] = field(default_factory=list)     # hosts that could not be observed


@dataclass
class MetricsResult:
    services: list[Any]              # metrics.ServiceMetrics, per host and service
    errors: list[str] = field(default_factory=list)     # hosts that could not be read


@dataclass
class WatchTick:
    tick: int
    time: str
    status: StatusResult
    alerts: list[Any]                # watch.Alert: what fired or recovered since the last tick
    sink_errors: list[str]           # alerts that could not be delivered
    seconds: float                   # how long this tick's observation took


@dataclass
class WatchResult:
    ticks: int


@dataclass
class OperateResult:
    order: list[str]                 # the services, in the order they went
    added: list[str]                 # dependents (stop) or dependencies (start) beyond those named
    outcomes: list[Any] = field(default_factory=list)    # operate.OpOutcome per host and service
    errors: list[str] = field(default_factory=list)      # hosts that could not be reached

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(not o.ok for o in self.outcomes)


@dataclass
class LogsResult:
    entries: list[Any]               # logs.LogEntry, oldest first (empty when followed: they were streamed)
    hosts: list[str]                 # the hosts read (lines name the host when there are several)
    errors: list[str] = field(default_factory=list)


@dataclass
class HistoryResult:
    entries: list[dict[str, Any]]
    service: str | None = None
    skipped: list[tuple[int, str]] = field(default_factory=list)   # unreadable lines: (line number, why)
    path: str = ""


def run_status(req: StatusRequest) -> StatusResult:
    """Desired vs running version, systemd state, health and memory per host and service."""
    from reconciler import pipeline

    run = pipeline.prepare(req.files, req.state, (), req.hosts, secrets=False, connect_early=True)
    pipeline.observe(run, externals=True)
    return status_of(run)


def status_of(run: Any) -> StatusResult:
    """The status rows of an observed run (`recon status`, and each tick of `recon watch`)."""
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
                healthy=(props.get("ActiveState") in ("inactive", "failed") if d.run == "stopped"
                         else bool(o and o.health and o.health.ok)),
                memory=_mib(props.get("MemoryCurrent")), memory_max=_mib(props.get("MemoryMax")),
                restarts=int(props.get("NRestarts", "0") or 0), pid=o.main_pid if o else 0, run=d.run))
    return StatusResult(rows, errors, external_rows(run))


def external_rows(run: Any) -> list[StatusRow]:
    """A row per `external:` entry and host that shows it (marked external): its unit's state, its health."""
    from reconciler.external import parse_probe, shown_from

    rows: list[StatusRow] = []
    for host in run.desired:
        obs = run.observed.get(host)
        if (run.hosts and host not in run.hosts) or obs is None or obs.error:
            continue
        shown = shown_from(host, run.spec.services.values(), run.spec.externals)
        for name, h in sorted(parse_probe(obs.external, shown, host).items()):
            rows.append(StatusRow(host, name, "-", None, None, h.state or "-", h.health_summary(), h.ok, "-", "-",
                                  0, 0, external=True))
    return rows


def _mib(v: str | None) -> str:
    if not v or not v.isdigit():
        return "-"
    n = int(v)
    return f"{n / 1048576:.1f}M" if n < 1024**3 else f"{n / 1024**3:.1f}G"


def run_history(req: HistoryRequest) -> HistoryResult:
    """The newest `limit` history entries (of one service); a name recon never saw is an error."""
    from reconciler import pipeline

    store = pipeline.open_store(req.state)
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


def run_versions(req: VersionsRequest) -> VersionsResult:
    """The version each service's process runs on each of its hosts (one observation per host)."""
    from reconciler import pipeline

    run = pipeline.prepare(req.files, req.state, (), req.hosts, secrets=False)
    pipeline.observe(run)
    out: list[ServiceVersions] = []
    errors = sorted({str(o.error) for o in run.observed.values() if o.error})
    for name, svc in run.spec.services.items():
        running: dict[str, str | None] = {}
        for h in svc.hosts:
            obs = run.observed.get(h)
            if obs is None or obs.error:
                continue
            o = obs.services.get(name)
            running[h] = o.running_version if o is not None and o.active == "active" else None
        out.append(ServiceVersions(name, svc.version, running))
    return VersionsResult(out, errors)


def run_metrics(req: MetricsRequest) -> MetricsResult:
    """Every service's metrics endpoint and systemd figures, one command per host, all hosts at once."""
    from reconciler import pipeline
    from reconciler.metrics import host_script, parse_answer
    from reconciler.transport import Session

    run = pipeline.prepare(req.files, req.state, (), req.hosts, services=req.services, secrets=False)
    names = list(req.services) or list(run.spec.services)
    targets = {h: [(n, run.desired[h][n].unit_name, run.desired[h][n].metrics_url) for n in names
                   if n in run.desired[h]] for h in pipeline.hosts_in_scope(run)}
    targets = {h: t for h, t in targets.items() if t}
    result = MetricsResult([])
    with Session({h: run.spec.hosts[h] for h in targets}) as session:
        result.errors += [session.errors[h] for h in targets if h in session.errors]
        answers = session.run_many({h: host_script(t) for h, t in targets.items()})
    for h, res in answers.items():
        if res.stdout:
            result.services += parse_answer(h, res.stdout, targets[h])
        else:
            result.errors.append(f"{h}: reading metrics failed: {res.stderr.strip() or 'no answer'}")
    return result


def run_watch(req: WatchRequest, on_tick: Any) -> WatchResult:
    """Observe every host each `interval` seconds over connections opened once, hand each tick to
    `on_tick`, and send each alert (a transition) to the sinks asked for; until `count` ticks or Ctrl-C."""
    import time

    from reconciler import pipeline
    from reconciler.state import now_iso
    from reconciler.transport import Session
    from reconciler.watch import send_email, send_exec, send_webhook, transitions

    if req.alert_email and not req.smtp:
        raise ReconError("--alert-email needs --smtp HOST[:PORT] (the mail server to send through)")
    if req.interval <= 0:
        raise ReconError(f"--interval {req.interval:g}: expected a positive number of seconds")
    run = pipeline.prepare(req.files, req.state, (), req.hosts, secrets=False)
    done = 0
    before: StatusResult | None = None
    opened = time.monotonic()
    try:
        with Session(pipeline.hosts_in_scope(run)) as session:
            while req.count is None or done < req.count:
                t0 = time.monotonic() if done else opened     # the first tick includes connecting
                if done:        # a host that was down (or whose connection broke) is connected again
                    session.reconnect()
                pipeline.observe(run, session, externals=True)
                status = status_of(run)
                seconds = time.monotonic() - t0
                alerts = transitions(before, status, now_iso())
                errors: list[str] = []
                for alert in alerts:
                    if req.alert_exec:
                        errors.append(send_exec(req.alert_exec, alert) or "")
                    if req.alert_webhook:
                        errors.append(send_webhook(req.alert_webhook, alert) or "")
                    if req.alert_email and req.smtp:
                        errors.append(send_email(req.alert_email, req.smtp, alert) or "")
                done += 1
                on_tick(WatchTick(done, now_iso(), status, alerts, [e for e in errors if e], seconds))
                before = status
                if req.count is not None and done >= req.count:
                    break
                time.sleep(max(0.0, req.interval - (time.monotonic() - t0)))
    except KeyboardInterrupt:
        pass
    return WatchResult(done)


def run_operate(req: OperateRequest, confirm: Any, on_event: Any) -> OperateResult:
    """`recon start|stop|restart`: under the state lock, dependency-aware, recorded; `confirm(text)` is asked
    before touching services beyond those named (unless `yes`) and raises to cancel."""
    import gevent

    from reconciler import pipeline
    from reconciler.operate import Op, Operator, order
    from reconciler.transport import Session

    op = Op(req.op)
    if not req.services and not req.all_services:
        raise ReconError(f"recon {op}: name the services (or --all for every service of the spec)")
    store = pipeline.open_store(req.state)
    what = " ".join(req.services) or "--all"
    spec, scope = lock_scope(store, req.files, req.hosts)
    with store.lock(f"recon {op} {what}" + (f" ({req.reason})" if req.reason else ""), timeout=req.lock_timeout,
                    hosts=scope):
        run = pipeline.prepare(req.files, req.state, (), req.hosts, services=req.services, secrets=False,
                               store=store, spec=spec)
        names = list(req.services) or list(run.spec.services)
        ordered, added = order(run.spec, names, op)
        result = OperateResult(ordered, added)
        if added and not req.yes:
            which = "its dependents" if op == Op.STOP else "what it depends on"
            confirm(f"recon {op} {' '.join(names)} also {op}s {which}: {', '.join(added)}")
        scope = pipeline.hosts_in_scope(run)
        per_host = {h: [n for n in ordered if n in run.desired[h]] for h in scope}
        with Session({h: scope[h] for h, ns in per_host.items() if ns}) as session:
            result.errors += [session.errors[h] for h in per_host if h in session.errors]
            operator = Operator(run, session, op, req.reason, on_event)
            gevent.joinall([gevent.spawn(operator.host, h, per_host[h]) for h in session.connected])
            result.outcomes = operator.outcomes
    return result


def run_logs(req: LogsRequest, on_entry: Any = None) -> LogsResult:
    """The services' journals from every host at once; with `follow`, each entry goes to
    `on_entry(entry, several_hosts)` as it arrives, until interrupted."""
    from reconciler import pipeline
    from reconciler.logs import journal_command, parse_line, priority_arg

    priority = priority_arg(req.priority) if req.priority else None
    run = pipeline.prepare(req.files, req.state, (), req.hosts, services=req.services, secrets=False,
                           connect_early=not req.follow)
    names = list(req.services) or list(run.spec.services)
    scope = {h: host for h, host in pipeline.hosts_in_scope(run).items()
             if any(h in run.spec.services[n].hosts for n in names)}
    result = LogsResult([], list(scope))
    if run.early is not None:     # no --follow: one journalctl per host through OpenSSH, logged in early
        _logs_once(run, scope, names, req, priority, result)
        return result
    import gevent  # --follow streams through pyinfra's session (gevent, paramiko): imported only here

    from reconciler.transport import Session

    with Session(scope) as session:
        result.errors += [session.errors[h] for h in scope if h in session.errors]

        def read(host: str) -> None:
            units = {run.desired[host][n].unit_name: n for n in names if n in run.desired[host]}
            cmd = journal_command(list(units), req.lines, req.since, priority, req.follow)

            def line(text: str) -> None:
                entry = parse_line(host, text, units)
                if entry is None:
                    return
                if req.follow and on_entry is not None:
                    on_entry(entry, len(scope) > 1)
                else:
                    result.entries.append(entry)

            res = session.stream(host, cmd, line)
            if not res.ok and not req.follow:
                bad = [t for t in res.stdout.splitlines() if not t.startswith("{")]
                result.errors.append(f"{host}: journalctl failed: {'; '.join(bad) or res.stderr or 'no output'}")

        jobs = [gevent.spawn(read, h) for h in session.connected]
        try:
            gevent.joinall(jobs, raise_error=False)
        except KeyboardInterrupt:       # the end of a --follow
            gevent.killall(jobs)
    result.entries.sort(key=lambda e: e.time)
    return result


def _logs_once(run: Any, scope: dict[str, Any], names: list[str], req: LogsRequest, priority: str | None,
               result: LogsResult) -> None:
    """`recon logs` without --follow: the journalctl of every host at once over the OpenSSH session that
    `prepare(connect_early=True)` started (its login overlapped loading the spec), like `recon plan`."""
    from reconciler.logs import journal_command, parse_line

    early, run.early = run.early, None
    units = {h: {run.desired[h][n].unit_name: n for n in names if n in run.desired[h]} for h in scope}
    try:
        answers = early.run_many({h: journal_command(list(units[h]), req.lines, req.since, priority, False)
                                  for h in scope}, timeout=120)
    finally:
        early.close()
    result.errors += [early.errors[h] for h in scope if h in early.errors]
    for h, res in answers.items():
        for text in res.stdout.splitlines():
            entry = parse_line(h, text, units[h])
            if entry is not None:
                result.entries.append(entry)
        if not res.ok:
            bad = [t for t in res.stdout.splitlines() if not t.startswith("{")]
            result.errors.append(f"{h}: journalctl failed: {'; '.join(bad) or res.stderr.strip() or 'no output'}")
    result.entries.sort(key=lambda e: e.time)


def run_force_unlock(req: ForceUnlockRequest) -> dict[str, Any]:
    """Remove the state lock; returns who held it."""
    from reconciler import pipeline

    return pipeline.open_store(req.state).force_unlock(req.lock_id)
