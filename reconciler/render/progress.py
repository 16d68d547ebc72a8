"""Progress of a running apply (one line per step, coloured when on a terminal) and its summary."""

from __future__ import annotations

import sys
import time
from typing import Any

from reconciler.apply import ApplyResult, Event

_STYLE = {"ok": ("✓", "green"), "fail": ("✗", "red"), "rollback": ("↩", "magenta"), "skip": ("·", "dim"),
          "step": ("…", "dim"), "wave": ("▸", "bold cyan"), "batch": ("▶", "bold"), "info": ("•", "")}


class Progress:
    """Prints apply events as they happen, with the time since the start."""

    def __init__(self, color: bool, verbose: bool = False, file: Any = None) -> None:
        from rich.console import Console

        self.console = Console(file=file or sys.stdout, force_terminal=color, no_color=not color,
                               highlight=False, soft_wrap=True)
        self.verbose = verbose
        self.t0 = time.monotonic()

    def __call__(self, ev: Event) -> None:
        if ev.kind == "step" and not self.verbose:
            return
        mark, style = _STYLE.get(ev.kind, ("•", ""))
        where = f"{ev.host}/{ev.service}" if ev.service else ev.host
        elapsed = f"[{time.monotonic() - self.t0:5.1f}s]"
        text = f"{elapsed} {mark} " + (f"{where}: " if where else "") + ev.message
        self.console.print(text, style=style or None, markup=False)


def summary_line(result: ApplyResult) -> str:
    parts = [f"{result.count(k)} {k}" for k in ("created", "updated", "replaced", "restarted", "reloaded",
                                                "deleted", "rolled-back", "failed", "skipped")]
    head = "Apply failed" if result.failed else "Apply complete"
    return f"{head}: " + ", ".join(parts).replace("rolled-back", "rolled back") + "."


def print_summary(result: ApplyResult, color: bool) -> None:
    from rich.console import Console

    console = Console(force_terminal=color, no_color=not color, highlight=False, soft_wrap=True)
    console.print()
    bad = [o for o in result.outcomes if o.result in ("failed", "rolled-back", "skipped")]
    if bad:
        console.print("What did not go as planned:", style="bold")
        for o in bad:
            console.print(f"  {o.address}: {o.result} — {o.detail}", style="red" if o.result == "failed" else
                          "magenta" if o.result == "rolled-back" else "dim", markup=False)
    if result.stopped:
        console.print(f"Rollout stopped: {result.stopped}", style="red", markup=False)
    console.print(summary_line(result), style="bold red" if result.failed else "bold green", markup=False)
