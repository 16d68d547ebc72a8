"""Progress of a running apply (one line per step, coloured when on a terminal) and its summary.

While a health gate waits, each waiting service shows its elapsed time and its last probe's answer:
on a terminal as live lines that are redrawn in place (and vanish when the gate ends), otherwise as a
plain line every `WAIT_EVERY_S` seconds per service, so a CI log never goes silent."""

from __future__ import annotations

import sys
import time
from typing import Any

from reconciler.outcome import ApplyResult, Event, EventKind, Result

_STYLE = {EventKind.OK: ("✓", "green"), EventKind.FAIL: ("✗", "red"), EventKind.ROLLBACK: ("↩", "magenta"),
          EventKind.SKIP: ("·", "dim"), EventKind.STEP: ("…", "dim"), EventKind.WAVE: ("▸", "bold cyan"),
          EventKind.BATCH: ("▶", "bold"), EventKind.INFO: ("•", "")}


WAIT_EVERY_S = 5.0


class Progress:
    """Prints apply events as they happen, with the time since the start."""

    def __init__(self, color: bool, verbose: bool = False, file: Any = None, live: bool | None = None) -> None:
        from rich.console import Console

        self.console = Console(file=file or sys.stdout, force_terminal=color, no_color=not color,
                               highlight=False, soft_wrap=True)
        self.verbose = verbose
        self.t0 = time.monotonic()
        self.live_ok = self.console.is_terminal if live is None else live
        self.waiting: dict[str, str] = {}        # HOST/SERVICE → its wait line
        self.last_wait: dict[str, float] = {}    # HOST/SERVICE → when its last plain wait line was printed
        self.live: Any = None

    def __call__(self, ev: Event) -> None:
        if ev.kind == EventKind.WAIT:
            self._wait(ev)
            return
        self._done_waiting(f"{ev.host}/{ev.service}")
        if ev.kind == EventKind.STEP and not self.verbose:
            return
        mark, style = _STYLE.get(ev.kind, ("•", ""))
        where = f"{ev.host}/{ev.service}" if ev.service else ev.host
        elapsed = f"[{time.monotonic() - self.t0:5.1f}s]"
        text = f"{elapsed} {mark} " + (f"{where}: " if where else "") + ev.message
        self.console.print(text, style=style or None, markup=False)

    def _wait(self, ev: Event) -> None:
        where = f"{ev.host}/{ev.service}"
        now = time.monotonic()
        line = f"[{now - self.t0:5.1f}s] ◷ {where}: {ev.message}"
        if not self.live_ok:
            if now - self.last_wait.get(where, -WAIT_EVERY_S) >= WAIT_EVERY_S:
                self.last_wait[where] = now
                self.console.print(line, style="dim", markup=False)
            return
        from rich.live import Live
        from rich.text import Text

        self.waiting[where] = line
        view = Text("\n".join(self.waiting.values()), style="yellow")
        if self.live is None:
            self.live = Live(view, console=self.console, transient=True, auto_refresh=False)
            self.live.start()
        self.live.update(view, refresh=True)

    def _done_waiting(self, where: str) -> None:
        self.last_wait.pop(where, None)
        if self.waiting.pop(where, None) is not None and not self.waiting and self.live is not None:
            self.live.stop()
            self.live = None


def summary_line(result: ApplyResult, command: str = "apply") -> str:
    """The closing count line. A `recon rollback` counts its switched releases as rolled back."""
    if command == "rollback":
        head = "Rollback failed" if result.failed else "Rollback complete"
        return f"{head}: {result.count(Result.REPLACED)} rolled back, {result.count(Result.FAILED)} failed."
    parts = [f"{result.count(r)} {r.replace('-', ' ')}" for r in Result]
    head = "Apply failed" if result.failed else "Apply complete"
    return f"{head}: " + ", ".join(parts) + "."


def print_summary(result: ApplyResult, color: bool, command: str = "apply") -> None:
    from rich.console import Console

    console = Console(force_terminal=color, no_color=not color, highlight=False, soft_wrap=True)
    console.print()
    bad = [o for o in result.outcomes if o.result in (Result.FAILED, Result.ROLLED_BACK, Result.SKIPPED)]
    if bad:
        console.print("What did not go as planned:", style="bold")
        for o in bad:
            console.print(f"  {o.address}: {o.result} — {o.detail}", style="red" if o.result == Result.FAILED else
                          "magenta" if o.result == Result.ROLLED_BACK else "dim", markup=False)
    if result.stopped:
        console.print(f"Rollout stopped: {result.stopped}", style="red", markup=False)
    console.print(summary_line(result, command), style="bold red" if result.failed else "bold green", markup=False)
