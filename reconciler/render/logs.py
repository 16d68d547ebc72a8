"""`recon logs` lines: `TIME [HOST] SERVICE[PID] PRIORITY: MESSAGE` as text (errors in red, warnings in
yellow on a terminal), or one JSON object per line for machines."""

from __future__ import annotations

import json

from reconciler.logs import LogEntry
from reconciler.render.escape import printable

_STYLE = {0: "bold red", 1: "bold red", 2: "bold red", 3: "red", 4: "yellow", 7: "dim"}


def render_log_json(e: LogEntry) -> str:
    return json.dumps({"time": e.time, "host": e.host, "service": e.service, "priority": e.priority,
                       "priority_name": e.priority_name, "pid": e.pid, "by_systemd": e.by_systemd,
                       "message": e.message}, ensure_ascii=False)


def render_log_text(e: LogEntry, with_host: bool, color: bool) -> str:
    """One line; control characters in the message are escaped so a log cannot drive the terminal."""
    when = e.time[:23].replace("T", " ")
    who = f"{e.service} (systemd)" if e.by_systemd else f"{e.service}[{e.pid}]" if e.pid else e.service
    text = f"{when} {e.host + ' ' if with_host else ''}{who} {e.priority_name}: {printable(e.message)}"
    style = _STYLE.get(e.priority)
    if not color or not style:
        return text
    codes = {"bold red": "1;31", "red": "31", "yellow": "33", "dim": "2"}[style]
    return f"\x1b[{codes}m{text}\x1b[0m"
