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

# What systemd 252 and the kernel accept (measured on a test host, docs/design.md "Validation of values").
# Outside these, systemd logs "out of range, ignoring" (or the kernel refuses the cgroup value), the
# service runs without the limit, and the next plan reports drift.
MAX_LIMIT_BYTES = 2**64 - 2      # MemoryMax=18446744073709551615 is "out of range"; 0 too
MAX_TASKS = 4_194_304            # the kernel's PID_MAX_LIMIT: pids.max above it is EINVAL
MAX_NOFILE = 2_147_483_584       # the kernel's ceiling of fs.nr_open (64-bit); 0 makes exec fail (203/EXEC)
MAX_CPU_PERCENT = Decimal("21474836.47")  # systemd keeps CPUQuota= in an int of 1/10000ths
MIN_SECONDS = 0.001               # recon writes durations to units in whole ms
CPU_PERCENT_DECIMALS = 2         # CPUQuota=1.234% is "invalid", 0.01% is the finest step


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


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def range_problem(field: str, raw: object, value: int | float | str) -> str | None:
    """What a parsed limit or duration must be when it is out of range, or None when it is fine.

    `field` is the spec key (`memory_max`, `timeout_s`…), `raw` the spec value, `value` its parse."""
    if isinstance(value, str):  # infinity
        return None
    if field in ("memory_max", "memory_high") and not 1 <= value <= MAX_LIMIT_BYTES:
        return f"more than 0 bytes and at most {MAX_LIMIT_BYTES} bytes, or infinity"
    if field == "tasks_max" and not 1 <= value <= MAX_TASKS:
        return f"a whole number from 1 to {MAX_TASKS} (the kernel's PID limit), or infinity"
    if field == "nofile" and not 1 <= value <= MAX_NOFILE:
        return f"a whole number from 1 to {MAX_NOFILE} (the kernel's ceiling), or infinity"
    if field == "cpu_quota":
        number = str(raw)[:-1]
        if _decimals(number) > CPU_PERCENT_DECIMALS or not 0 < Decimal(number) <= MAX_CPU_PERCENT:
            return (f"a percentage above 0% with at most {CPU_PERCENT_DECIMALS} decimals, like 50% or 12.5%, "
                    f"at most {MAX_CPU_PERCENT}%")
    if field in ("timeout_s", "interval_s") and not value >= MIN_SECONDS:
        return "a duration of at least 1ms, like 500ms, 2s or 30"
    if field in ("delay_s", "watchdog_s") and 0 < value < MIN_SECONDS:
        return "0, or a duration of at least 1ms (systemd's unit here is the millisecond)"
    return None


def format_seconds(seconds: float) -> str:
    """30.0 → `30s`, 0.5 → `500ms` (a systemd time span)."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"
