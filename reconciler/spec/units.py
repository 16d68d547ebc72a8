"""Parse the spec's sizes, durations, percentages and counts into numbers systemd also reports."""

from __future__ import annotations

import re
from decimal import Decimal

# Matched with fullmatch: `$` alone would also accept a trailing newline ("4G\n").
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGT]?)")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|min|m|h)?")
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")
_MAX_DIGITS = 30  # more digits than any size, duration or percentage needs
MAX_SIZE = 2**64 - 1  # bytes; systemd's byte limits are 64-bit
MAX_SECONDS = 10**9  # ~31 years: a longer "duration" is a typo
_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}

INFINITY = "infinity"


def parse_size(value: str | int) -> int | str:
    """`4G` → 4294967296 bytes; `infinity` stays `infinity`. ValueError when malformed."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= MAX_SIZE:
            raise ValueError(f"not a size: {value}")
        return value
    if value == INFINITY:
        return INFINITY
    m = _SIZE.fullmatch(value) if isinstance(value, str) and len(value) <= _MAX_DIGITS else None
    if not m:
        raise ValueError(f"not a size: {value!r}")
    size = int(Decimal(m.group(1)) * _FACTORS[m.group(2)])
    if size > MAX_SIZE:
        raise ValueError(f"size too large: {value!r}")
    return size


def parse_duration(value: str | int | float) -> float:
    """`30s` → 30.0, `5min` → 300.0, `500ms` → 0.5; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if not 0 <= value <= MAX_SECONDS:  # also refuses NaN and infinity
            raise ValueError(f"not a duration: {value!r}")
        return float(value)
    m = _DURATION.fullmatch(value) if isinstance(value, str) and len(value) <= _MAX_DIGITS else None
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    seconds = float(m.group(1)) * _SECONDS[m.group(2)]
    if not seconds <= MAX_SECONDS:
        raise ValueError(f"duration too long: {value!r}")
    return seconds


def parse_percent(value: str) -> float:
    """`200%` → 200.0."""
    m = _PERCENT.fullmatch(value) if isinstance(value, str) and len(value) <= _MAX_DIGITS else None
    if not m:
        raise ValueError(f"not a percentage: {value!r}")
    return float(m.group(1))


def parse_count(value: str | int) -> int | str:
    """A whole number or `infinity`."""
    if isinstance(value, bool):
        raise ValueError(f"not a count: {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    if value == INFINITY:
        return INFINITY
    if isinstance(value, str) and len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"not a count: {value!r}")


def format_seconds(seconds: float) -> str:
    """30.0 → `30s`, 0.5 → `500ms` (a systemd time span)."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"
