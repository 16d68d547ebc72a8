"""The services' journals, read over SSH: one `journalctl -o json` per host for every unit asked for, all
hosts at once; with follow, every host's stream at once. Pure here: the command to run and the parsing of
its lines; `runner.run_logs` does the I/O."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime

from reconciler.errors import ReconError, did_you_mean

PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_ALIASES = {"error": "err", "warn": "warning", "critical": "crit", "emergency": "emerg", "panic": "emerg"}


@dataclass(frozen=True)
class LogEntry:
    """One journal line of one service on one host."""

    host: str
    service: str
    time: str            # ISO 8601, UTC, microseconds
    priority: int        # 0 emerg … 7 debug (6 info when the service gave none)
    pid: int | None
    message: str
    by_systemd: bool = False   # systemd's own line about the unit (Started…, Stopped…, a failure)

    @property
    def priority_name(self) -> str:
        return PRIORITIES[self.priority] if 0 <= self.priority < len(PRIORITIES) else str(self.priority)


def priority_arg(value: str) -> str:
    """`-p` as journalctl takes it (a name, a number 0–7, or a range `err..warning`); ReconError otherwise."""
    parts = value.split("..")
    if len(parts) > 2 or not all(parts):
        raise ReconError(f"-p {value}: expected a priority ({', '.join(PRIORITIES)}, or 0–7), or a range FROM..TO")
    out = []
    for part in parts:
        p = _ALIASES.get(part.lower(), part.lower())
        if p in PRIORITIES or (p.isdigit() and int(p) < len(PRIORITIES)):
            out.append(p)
            continue
        raise ReconError(f"-p {value}: unknown priority {part!r}.{did_you_mean(p, PRIORITIES)} "
                         f"(priorities: {', '.join(PRIORITIES)}, or 0–7)")
    return "..".join(out)


def journal_command(units: list[str], lines: int, since: str | None, priority: str | None, follow: bool) -> str:
    """One journalctl for every unit of one host: the last `lines` entries (0: all), JSON, one per line."""
    argv = ["journalctl", "--no-pager", "-q", "-o", "json", "--output-fields=MESSAGE,PRIORITY,_PID,_SYSTEMD_UNIT,UNIT"]
    for u in units:
        argv += ["-u", u]
    argv += ["-n", str(lines) if lines > 0 else "all"]
    if since:
        argv += ["--since", since]
    if priority:
        argv += ["-p", priority]
    if follow:
        argv.append("-f")
    return " ".join(shlex.quote(a) for a in argv)


def parse_line(host: str, line: str, services: dict[str, str]) -> LogEntry | None:
    """A journalctl JSON line → LogEntry; None for anything else (journalctl's own notes). `services`
    maps unit names to service names."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    unit = str(doc.get("_SYSTEMD_UNIT") or "")
    by_systemd = unit not in services and str(doc.get("UNIT") or "") in services
    if by_systemd:
        unit = str(doc["UNIT"])
    message = doc.get("MESSAGE")
    if isinstance(message, list):      # not UTF-8: journald gives the bytes
        message = bytes(b for b in message if isinstance(b, int) and 0 <= b < 256).decode("utf-8", "replace")
    try:
        micros = int(doc.get("__REALTIME_TIMESTAMP", 0))
        priority = int(doc.get("PRIORITY", 6))
    except (TypeError, ValueError):
        return None
    pid = doc.get("_PID")
    when = datetime.fromtimestamp(micros / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return LogEntry(host, services.get(unit, unit.removesuffix(".service")), when, priority,
                    int(pid) if isinstance(pid, str) and pid.isdigit() and not by_systemd else None,
                    str(message or ""), by_systemd)
