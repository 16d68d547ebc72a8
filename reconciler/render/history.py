"""`recon history` as text: one aligned row per applied change, newest last."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = ("TIME", "SERIAL", "WHO", "ADDRESS", "ACTION", "VERSION", "RESULT", "DETAIL")


def _row(e: dict[str, Any]) -> list[str]:
    ver = str(e.get("to") or "")
    if e.get("from") and e.get("from") != e.get("to"):
        ver = f"{e.get('from')} → {e.get('to')}"
    return [str(e.get("time", ""))[:19].replace("T", " "), f"#{e.get('serial', '?')}",
            f"{e.get('user', '?')}@{e.get('machine', '?')}", f"{e.get('host')}/{e.get('service')}",
            str(e.get("action", "")), ver, str(e.get("result", "")), str(e.get("detail") or "")]


def render_history_text(entries: Sequence[dict[str, Any]]) -> str:
    """Columns padded to their widest cell (the last one, DETAIL, is not padded)."""
    rows = [list(COLUMNS), *(_row(e) for e in entries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
             for r in rows]
    return "\n".join(lines) + "\n"


def render_skipped_lines(skipped: Sequence[tuple[int, str]], path: str) -> str:
    """The warning for history lines that could not be read (they are skipped, never a crash)."""
    reasons = "; ".join(f"line {n}: {why}" for n, why in skipped[:5]) + ("; …" if len(skipped) > 5 else "")
    return f"Warning: skipped {len(skipped)} unreadable line{'s' * (len(skipped) != 1)} of {path} ({reasons})\n"
