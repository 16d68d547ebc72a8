"""What every plan renderer shares: defensive secret masking, short printable values, counts, marks.

The renderers never trust that a plan was masked upstream: `field_values` masks any field flagged
`sensitive` again, and `printable` escapes control characters so a value from a host cannot inject
terminal escape codes or break a Markdown comment.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from reconciler.plan import ACTIONS, Action, Change, Effect, FieldChange, Kind, Plan
from reconciler.render.escape import printable

MASK = "(sensitive)"
VALUE_LIMIT = 80          # a value longer than this is summarised, never dumped whole

# One mark per action. `±` (replace) follows PRODUCT.md; `↻` is a restart without a change of
# files; a reload is an in-place change applied by a signal, so it shares `~` with update.
MARKS: dict[str, str] = {
    Action.CREATE: "+",
    Action.UPDATE: "~",
    Action.REPLACE: "±",
    Action.DELETE: "-",
    Action.RESTART: "↻",
    Action.RELOAD: "~",
}
# Field lines: `+` a value appears, `-` a value goes away, `~` a value changes.
FIELD_MARKS = ("+", "-", "~")

EFFECT_WORDS: dict[str, str] = {
    Effect.START: "will start",
    Effect.RESTART: "will restart",
    Effect.RELOAD: "will reload (no restart)",
    Effect.STOP: "will stop",
    Effect.DAEMON_RELOAD: "will run systemctl daemon-reload (no restart)",
    Effect.NONE: "no change to the running process",
}

DRIFT_WORDS = "drift: changed outside recon"


def mark(action: str) -> str:
    return MARKS.get(action, "?")


def effect_words(effect: str) -> str:
    return EFFECT_WORDS.get(effect, f"effect: {printable(effect)}")


def is_drift(change: Change) -> bool:
    return bool(change.drift) or any(f.kind == Kind.DRIFT for f in change.fields)


def counts(plan: Plan) -> dict[str, int]:
    """Changes per action (every action present, zero or not); unknown actions are not counted."""
    out = dict.fromkeys(ACTIONS, 0)
    for c in plan.changes:
        if c.action in out:
            out[c.action] += 1
    return out


def drift_count(plan: Plan) -> int:
    return sum(1 for c in plan.changes if is_drift(c))


def count_words(plan: Plan) -> str:
    """`2 to create, 1 to update, 1 to replace, 0 to delete, 1 to restart, 0 to reload`."""
    n = counts(plan)
    return ", ".join(f"{n[a]} to {a}" for a in ACTIONS)


def summary_line(plan: Plan) -> str:
    """The closing line: `Plan: 2 to create, …, 0 to reload.` plus ` N drifted.` when drift."""
    line = f"Plan: {count_words(plan)}."
    drifted = drift_count(plan)
    return line + (f" {drifted} drifted." if drifted else "")


def mask_value(value: Any) -> Any:
    """A sensitive value becomes the mask; absence (None) stays visible, it is not a secret."""
    return None if value is None else MASK


def field_values(f: FieldChange) -> tuple[Any, Any]:
    """before/after as they may be shown: masked again here when the field is sensitive."""
    if f.sensitive:
        return mask_value(f.before), mask_value(f.after)
    return f.before, f.after


def field_mark(f: FieldChange) -> str:
    before, after = field_values(f)
    if before is None and after is not None:
        return "+"
    if after is None and before is not None:
        return "-"
    return "~"


def clip(text: str, limit: int = VALUE_LIMIT) -> str:
    """One line of at most `limit` characters; a cut line says how long it was."""
    text = printable(text)
    if len(text) <= limit:
        return text
    suffix = f"… ({len(text)} chars)"
    return text[: max(limit - len(suffix), 8)] + suffix


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _json(value: Any) -> str:
    return json.dumps(jsonable(value), ensure_ascii=False, separators=(", ", ": "))


def _one_line(value: Any) -> str | None:
    """The full one-line form of a value, or None for multi-line text (summarised differently)."""
    if isinstance(value, str):
        if value == "":
            return '""'
        if "\n" in value.strip("\n"):
            return None
        if value != value.strip():
            return printable(json.dumps(value, ensure_ascii=False))  # leading/trailing blanks visible
        return printable(value)
    if isinstance(value, bool | int | float | dict | list | tuple | set | frozenset):
        return printable(_json(value))
    return printable(str(value))


def _size(value: Any, text: str) -> str:
    if isinstance(value, dict):
        return f"{_plural(len(value), 'key')}, {len(text)} chars"
    if isinstance(value, list | tuple | set | frozenset):
        return f"{_plural(len(value), 'item')}, {len(text)} chars"
    return f"{len(text)} chars"


def _cut(value: Any, text: str, limit: int, start: int = 0) -> str:
    """`text` from `start`, cut to fit `limit` with a suffix giving its size."""
    if len(text) <= limit and start == 0:
        return text
    suffix = f"… ({_size(value, text)})"
    lead = "…" if start else ""
    room = max(limit - len(suffix) - len(lead), 8)
    body = text[start:]
    return lead + body if len(lead + body) <= limit else lead + body[:room] + suffix


def _lines_summary(value: str, limit: int, line_no: int | None = None) -> str:
    lines = value.splitlines()
    i = line_no if line_no is not None else next((k for k, ln in enumerate(lines) if ln.strip()), 0)
    line = printable(lines[i]) if i < len(lines) else ""
    where = f"line {i + 1}: " if line_no is not None else ""
    suffix = f"… ({len(lines)} lines, {len(value)} chars)"
    room = max(limit - len(suffix) - len(where), 8)
    return where + line[:room] + suffix


def short(value: Any, limit: int = VALUE_LIMIT) -> str:
    """A value on one line, summarised when long: multi-line text and JSON blobs are never dumped."""
    if value is None:
        return "(none)"
    text = _one_line(value)
    if text is None:
        return _lines_summary(value, limit)
    return _cut(value, text, limit)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def before_after(f: FieldChange, limit: int = VALUE_LIMIT) -> tuple[str, str]:
    """Both sides as short strings. Long values that differ are shown from near their first difference;
    values that would read the same (`"16"` vs `16`) are shown as JSON."""
    before, after = field_values(f)
    if before is None or after is None:
        return short(before, limit), short(after, limit)
    tb, ta = _one_line(before), _one_line(after)
    if tb is None and ta is None:  # two multi-line texts: show the first line that differs
        lb, la = before.splitlines(), after.splitlines()
        k = next((i for i, (x, y) in enumerate(zip(lb, la, strict=False)) if x != y), min(len(lb), len(la)))
        return _lines_summary(before, limit, k), _lines_summary(after, limit, k)
    if tb is not None and ta is not None and max(len(tb), len(ta)) > limit:
        p = _common_prefix(tb, ta)
        start = max(p - 10, 0) if p > limit // 3 else 0
        return _cut(before, tb, limit, start), _cut(after, ta, limit, start)
    b, a = short(before, limit), short(after, limit)
    if b == a and before != after:
        b, a = clip(_json(before), limit), clip(_json(after), limit)
    return b, a


def jsonable(value: Any) -> Any:
    """Plain JSON data: keys as strings, tuples/sets as lists, NaN/inf and unknown types as strings."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((jsonable(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True, default=str))
    return str(value)


def by_wave(changes: Iterable[Change]) -> list[tuple[int, list[Change]]]:
    """Changes grouped by wave, waves ascending, the plan's order kept within a wave."""
    groups: dict[int, list[Change]] = {}
    for c in changes:
        groups.setdefault(int(c.wave or 0), []).append(c)
    return sorted(groups.items())


def wave_label(wave: int, changes: list[Change], max_names: int = 8) -> str:
    """`wave 1: orchestrator` (the services changing in that wave; a long list is cut)."""
    names = list(dict.fromkeys(printable(c.service or c.address) for c in changes))
    more = f", +{len(names) - max_names} more" if len(names) > max_names else ""
    shown = ", ".join(names[:max_names]) + more
    return f"wave {wave}: {shown}" if wave > 0 else f"no wave: {shown}"
