"""`recon watch`: alerts on transitions between two observations of the platform, and where they go.

Pure part: `conditions` (what is wrong in one tick's status), `transitions` (what fired and what
recovered between two ticks). I/O part: the sinks (a shell command, a webhook, mail), each of which
reports its own failure instead of stopping the watch."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from enum import StrEnum
from typing import Any

HOST_WIDE = "*"          # the service of a host-wide alert (the host is unreachable)


class AlertKind(StrEnum):
    UNHEALTHY = "unhealthy"          # active, but its health check fails
    STOPPED = "stopped"              # not active (inactive, failed, stopped by hand)
    RESTARTED = "restarted"          # systemd restarted it (NRestarts went up)
    VERSION = "version"              # it runs another version than the spec's
    UNREACHABLE = "unreachable"      # the host could not be read


class AlertState(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Alert:
    host: str
    service: str
    kind: AlertKind
    state: AlertState
    message: str
    time: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conditions(rows: Iterable[Any]) -> dict[tuple[str, str, AlertKind], str]:
    """What is wrong in one tick: (host, service, kind) → words. `rows` are `runner.StatusRow`s."""
    out: dict[tuple[str, str, AlertKind], str] = {}
    for r in rows:
        if r.state == "unreachable":
            out[(r.host, HOST_WIDE, AlertKind.UNREACHABLE)] = r.error or "unreachable"
            continue
        if r.run == "stopped":          # the spec wants it down: only a running one is news
            if r.state.startswith("active"):
                out[(r.host, r.service, AlertKind.STOPPED)] = f"runs although the spec says run: stopped ({r.state})"
            continue
        if not r.state.startswith("active") and r.state != "-":     # `-`: an external without a unit
            out[(r.host, r.service, AlertKind.STOPPED)] = f"unit is {r.state}"
        elif not r.healthy and r.health != "-":
            out[(r.host, r.service, AlertKind.UNHEALTHY)] = f"health check: {r.health}"
        if r.running is not None and r.running != r.desired:
            out[(r.host, r.service, AlertKind.VERSION)] = f"runs {r.running}, the spec wants {r.desired}"
    return out


def transitions(before: Any | None, after: Any, now: str) -> list[Alert]:
    """Alerts between two ticks (`runner.StatusResult`s; `before` None: the first tick, measured against
    a healthy platform, so what is already wrong fires once). Each condition fires once when it starts
    and once more when it ends; a restart fires each time the count goes up."""
    prev = conditions([*before.rows, *before.externals]) if before is not None else {}
    cur = conditions([*after.rows, *after.externals])
    alerts = [Alert(h, s, k, AlertState.FIRING, cur[(h, s, k)], now) for (h, s, k) in cur if (h, s, k) not in prev]
    alerts += [Alert(h, s, k, AlertState.RESOLVED, f"recovered ({prev[(h, s, k)]})", now)
               for (h, s, k) in prev if (h, s, k) not in cur]
    if before is not None:
        old = {(r.host, r.service): r.restarts for r in before.rows if r.state != "unreachable"}
        for r in after.rows:
            n = old.get((r.host, r.service))
            if n is not None and r.state != "unreachable" and r.restarts > n:
                alerts.append(Alert(r.host, r.service, AlertKind.RESTARTED, AlertState.FIRING,
                                    f"systemd restarted it ({n} → {r.restarts} restarts)", now))
    return sorted(alerts, key=lambda a: (a.host, a.service, a.kind, a.state))


# ------------------------------------------------------------------------------------------------ sinks
def send_exec(cmd: str, alert: Alert) -> str | None:
    """Run CMD through the shell, the alert as JSON on stdin and in RECON_ALERT_*; an error or None."""
    env = {**os.environ, "RECON_ALERT_HOST": alert.host, "RECON_ALERT_SERVICE": alert.service,
           "RECON_ALERT_STATE": alert.state, "RECON_ALERT_KIND": alert.kind}
    try:
        res = subprocess.run(cmd, shell=True, input=json.dumps(alert.to_dict()), text=True, env=env,
                             capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"--alert-exec took more than 30 s: {cmd}"
    return None if res.returncode == 0 else f"--alert-exec exited {res.returncode}: {res.stderr.strip()[:200]}"


def send_webhook(url: str, alert: Alert) -> str | None:
    req = urllib.request.Request(url, data=json.dumps(alert.to_dict()).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "recon-watch"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
    except Exception as exc:         # an unreachable receiver must not stop the watch
        return f"--alert-webhook {url}: {exc}"
    return None


def send_email(to: str, smtp: str, alert: Alert) -> str | None:
    host, _, port = smtp.partition(":")
    msg = EmailMessage()
    where = alert.host if alert.service == HOST_WIDE else f"{alert.host}/{alert.service}"
    msg["Subject"] = f"[recon] {alert.state}: {where} {alert.kind}"
    msg["From"] = f"recon@{os.uname().nodename}"
    msg["To"] = to
    msg.set_content(f"{where}: {alert.message}\n\n{json.dumps(alert.to_dict(), indent=2)}\n")
    try:
        with smtplib.SMTP(host, int(port or 25), timeout=10) as s:
            s.send_message(msg)
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        return f"--alert-email via {smtp}: {exc}"
    return None
