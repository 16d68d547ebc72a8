"""How wide output may be: the terminal's width, `$COLUMNS` when set, and no wrapping for pipes and files."""

from __future__ import annotations

import os
import shutil
import sys
from typing import TextIO

UNWRAPPED = 4096   # a pipe or a file (CI logs, `> plan.txt`): lines are as long as they need to be


def output_width(stream: TextIO | None = None) -> int:
    """`$COLUMNS` if it is a number, else the terminal's width when `stream` (stdout) is one, else UNWRAPPED."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) >= 20:
        return int(cols)
    stream = stream or sys.stdout
    try:
        if stream.isatty():
            return max(shutil.get_terminal_size((100, 24)).columns, 20)
    except (AttributeError, ValueError, OSError):
        pass
    return UNWRAPPED
