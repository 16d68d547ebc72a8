"""`recon status` as a table (rich, as wide as the terminal) or JSON, from a `runner.StatusResult`."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from typing import Any

from reconciler.runner import StatusResult

COLUMNS = ("HOST", "SERVICE", "DESIRED", "RUNNING", "STATE", "HEALTH", "MEMORY", "MAX", "RESTARTS")


def render_status_json(result: StatusResult) -> str:
    return json.dumps({"services": [asdict(r) for r in result.rows], "errors": result.errors,
                       "externals": [asdict(r) for r in result.externals]}, indent=2) + "\n"


def external_table(result: StatusResult) -> Any:
    """The `external:` entries (not managed by recon): host, name, its unit's state, health."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold", title="external (not managed by recon)",
                  title_justify="left", title_style="bold")
    for col in ("HOST", "EXTERNAL", "UNIT STATE", "HEALTH"):
        table.add_column(col)
    for r in result.externals:
        table.add_row(r.host, r.service, Text(r.state, style="green" if r.state.startswith("active") or r.state == "-"
                                              else "red"),
                      Text(r.health, style="green" if r.healthy else "red"))
    return table


def render_status_text(result: StatusResult, color: bool, width: int | None = None) -> str:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from reconciler.render.terminal import output_width

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, highlight=False,
                      width=width or output_width(), color_system="standard" if color else None)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in COLUMNS:
        table.add_column(col)
    for r in result.rows:
        table.add_row(r.host, r.service, r.desired,
                      Text(r.running or "-", style="green" if r.on_desired else "yellow"),
                      Text(r.state, style="green" if r.state.startswith("active") else "red"),
                      Text(r.health, style="green" if r.healthy else "red"),
                      r.memory, r.memory_max, str(r.restarts))
    console.print(table)
    if result.externals:
        console.print(external_table(result))
    for e in result.errors:
        console.print(f"✗ {e}", style="red", markup=False)
    n = len(result.rows)
    console.print(f"\n{sum(r.healthy for r in result.rows)}/{n} services healthy, "
                  f"{sum(r.on_desired for r in result.rows)}/{n} on the desired version.", markup=False)
    return buf.getvalue()
