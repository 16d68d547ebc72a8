"""`recon watch` output: on a terminal a live status table redrawn each tick, with the latest alerts under
it; otherwise (a pipe, a CI log) one summary line per tick and one line per alert; or one JSON object per
tick."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any, TextIO

from reconciler.runner import WatchTick
from reconciler.watch import HOST_WIDE, Alert, AlertState


def alert_line(a: Alert) -> str:
    where = a.host if a.service == HOST_WIDE else f"{a.host}/{a.service}"
    mark = "✗" if a.state == AlertState.FIRING else "✓"
    return f"{mark} {a.state}: {where} {a.kind} — {a.message}"


def tick_json(t: WatchTick) -> str:
    return json.dumps({"tick": t.tick, "time": t.time, "seconds": round(t.seconds, 3),
                       "services": [asdict(r) for r in t.status.rows], "errors": t.status.errors,
                       "externals": [asdict(r) for r in t.status.externals],
                       "alerts": [a.to_dict() for a in t.alerts], "alert_errors": t.sink_errors})


def tick_summary(t: WatchTick) -> str:
    rows = t.status.rows
    return (f"[tick {t.tick} {t.time[11:19]}] {sum(r.healthy for r in rows)}/{len(rows)} healthy, "
            f"{sum(r.on_desired for r in rows)}/{len(rows)} on the desired version"
            + (f", {sum(r.healthy for r in ext)}/{len(ext)} externals healthy" if (ext := t.status.externals) else "")
            + f" (observed in {t.seconds:.2f}s)")


class WatchView:
    """Prints ticks as they come (`live`: redraw a table in place; None: when stdout is a terminal)."""

    def __init__(self, fmt: str, color: bool, live: bool | None = None, file: TextIO | None = None) -> None:
        self.fmt = fmt
        self.color = color
        self.file = file or sys.stdout
        self.live_ok = (self.file.isatty() if live is None else live) and fmt == "text"
        self.live: Any = None
        self.recent: list[str] = []

    def __call__(self, t: WatchTick) -> None:
        if self.fmt == "json":
            print(tick_json(t), file=self.file, flush=True)
            return
        lines = [alert_line(a) for a in t.alerts] + [f"! {e}" for e in t.sink_errors]
        if not self.live_ok:
            print("\n".join([tick_summary(t), *("  " + x for x in lines)]), file=self.file, flush=True)
            return
        from rich.console import Console, Group
        from rich.live import Live
        from rich.text import Text

        from reconciler.render.status import render_status_text

        self.recent = (self.recent + [f"{t.time[11:19]} {x}" for x in lines])[-10:]
        view = Group(Text.from_ansi(render_status_text(t.status, self.color)), Text(tick_summary(t), style="dim"),
                     *(Text(x, style="red" if " firing: " in x else "green") for x in self.recent))
        if self.live is None:
            self.live = Live(view, console=Console(file=self.file, force_terminal=self.color), auto_refresh=False)
            self.live.start()
        self.live.update(view, refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
