"""The pull-request form of a plan: Markdown that never exceeds a comment size limit.

A title with the counts, errors, a summary table (address | action | reason | drift), per change a
folded `<details>` with a ```diff block of its fields, then notes. When the whole would exceed
`limit`, details are dropped from the end first (the table stays whole), then table rows, and the
comment ends with a note saying how many changes are not shown.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

from reconciler.plan import Change, FieldChange, Kind, Plan
from reconciler.render.common import (
    DRIFT_WORDS,
    before_after,
    count_words,
    drift_count,
    effect_words,
    field_mark,
    is_drift,
    mark,
    printable,
)

REASON_LIMIT = 200
NOTES_LIMIT = 50
_TABLE_ESCAPE = re.compile(r"([\\`|*_\[\]])")


def cell(text: str) -> str:
    """Text safe in a table cell: one line, `|` and backticks (and other markup) escaped, no HTML."""
    one_line = printable(" ".join(str(text).split()))
    return _TABLE_ESCAPE.sub(r"\\\1", one_line).replace("<", "&lt;").replace(">", "&gt;")


def _reason(c: Change) -> str:
    text = " ".join(printable(c.reason).split())
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"


def _title(plan: Plan, title: str) -> str:
    if not plan.changes:
        return f"### {title}: no changes"
    drifted = drift_count(plan)
    return f"### {title}: {count_words(plan)}" + (f", {drifted} drifted" if drifted else "")


def _errors(plan: Plan) -> str:
    n = len(plan.errors)
    what, whose = ("host", "its") if n == 1 else ("hosts", "their")
    lines = [f"> **Error: {n} {what} could not be observed**; {whose} services are not in this plan:", ">"]
    lines += [f"> - {cell(e)}" for e in plan.errors]
    return "\n".join(lines) + "\n"


def _refused(plan: Plan) -> str:
    lines = ["> **Refused**: recon does not own or will not use these; nothing is applied until this is fixed:",
             ">"]
    lines += [f"> - {cell(r)}" for r in plan.refused]
    return "\n".join(lines) + "\n"


def _resources(plan: Plan) -> str:
    lines = ["Accounts and directories:", ""]
    lines += [f"- {'create' if r.action == 'create' else 'use as it is'}: {cell(r.host)}: {cell(r.kind)} "
              f"{cell(r.name)} ({cell(r.detail)})" for r in plan.resources[:NOTES_LIMIT]]
    if len(plan.resources) > NOTES_LIMIT:
        lines.append(f"- … {len(plan.resources) - NOTES_LIMIT} more; run `recon plan` to see them all")
    return "\n".join(lines) + "\n"


def _table_head() -> str:
    return "| address | action | reason | drift |\n| --- | --- | --- | --- |\n"


def _row(c: Change) -> str:
    n = sum(1 for f in c.fields if f.kind == Kind.DRIFT)
    drift = ("drift" + (f" ({n} field{'s' if n != 1 else ''})" if n else "")) if is_drift(c) else ""
    return f"| {cell(c.address)} | {cell(mark(c.action) + ' ' + c.action)} | {cell(_reason(c))} | {drift} |\n"


def _diff_line(f: FieldChange) -> str:
    fm = field_mark(f)
    b, a = before_after(f)
    value = a if fm == "+" else b if fm == "-" else f"{b} → {a}"
    drift = f"   # {DRIFT_WORDS}" if f.kind == Kind.DRIFT else ""
    return f"{fm} {printable(f.path)}: {value}{drift}"


def code_fence(body: str) -> str:
    """A code fence longer than any run of backticks in `body`, so the block cannot be closed early."""
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    return "`" * max(3, longest + 1)


def _details(c: Change) -> str:
    summary = html.escape(f"{mark(c.action)} {printable(c.address)}: {c.action} — {_reason(c)}", quote=False)
    body = "\n".join([*(_diff_line(f) for f in c.fields), f"# {effect_words(c.effect)}"])
    fence = code_fence(body)
    return (f"<details><summary>{summary}</summary>\n\n{fence}diff\n{body}\n{fence}\n\n</details>\n\n")


def _notes(plan: Plan) -> str:
    lines = ["**Notes**", ""]
    lines += [f"- {cell(n)}" for n in plan.notes[:NOTES_LIMIT]]
    if len(plan.notes) > NOTES_LIMIT:
        lines.append(f"- … {len(plan.notes) - NOTES_LIMIT} more notes; run `recon plan` to see them all")
    if plan.ignored_drift:
        n = len(plan.ignored_drift)
        lines.append(f"- ignored drift: {n} service{'s' if n != 1 else ''} differ only in fields listed "
                     "under `ignore_drift`")
    return "\n".join(lines) + "\n"


def _more_note(n: int, details_only: bool) -> str:
    if n == 0:
        what = "notes"
    else:
        what = f"details of {n} more changes" if details_only else f"{n} more changes"
    return f"_… {what} not shown (comment size limit); run `recon plan` for the full plan._"


def join_blocks(parts: list[str]) -> str:
    """Markdown blocks separated by one blank line; empty blocks left out."""
    return "\n\n".join(p.strip("\n") for p in parts if p.strip())


def largest_fitting(build: Callable[[int], str], n: int, limit: int) -> str | None:
    """`build(k)` for the largest k ≤ n whose length is at most `limit`, or None when even `build(0)` is
    longer. `build(k)` must grow with k (k items shown, a closing note about the n - k left out)."""
    if len(build(0)) > limit:
        return None
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(build(mid)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return build(lo)


def _fit(before: list[str], items: list[str], after: list[str], wrap: str, limit: int,
         details_only: bool) -> str | None:
    """`before`, as many of `items` (joined, wrapped in `wrap` when not empty) as fit, `after`, the note."""
    def build(k: int) -> str:
        block = wrap + "".join(items[:k]) if k else ""
        return join_blocks([*before, block, *after, _more_note(len(items) - k, details_only)])

    return largest_fitting(build, len(items), limit)


def render_markdown(plan: Plan, limit: int = 65000, title: str = "recon plan") -> str:
    """Markdown for a pull-request comment, never longer than `limit` characters (no trailing newline)."""
    head = [_title(plan, title)]
    if plan.refresh_only:
        head.append("Refresh only: the hosts have moved away from what recon last applied.")
    if plan.errors:
        head.append(_errors(plan))
    if plan.refused:
        head.append(_refused(plan))
    if not plan.changes:
        head.append("No drift. Your hosts match what recon last applied." if plan.refresh_only
                    else "No changes. Your hosts match the spec." if not plan.errors
                    else "No changes on the hosts recon could reach.")
    tail = [_notes(plan)] if plan.notes or plan.ignored_drift else []
    if plan.resources:
        tail.insert(0, _resources(plan))
    rows = [_row(c) for c in plan.changes]
    details = [_details(c) for c in plan.changes]
    table = _table_head() + "".join(rows) if rows else ""

    full = join_blocks([*head, table, "".join(details), *tail])
    if len(full) <= limit:
        return full
    # 1. The whole table, details from the start while they fit (notes kept when they fit too).
    # 2. Then table rows from the start while they fit.
    attempts = (
        (lambda: _fit([*head, table], details, tail, "", limit, True)),
        (lambda: _fit([*head, table], details, [], "", limit, True)),
        (lambda: _fit(head, rows, tail, _table_head(), limit, False)),
        (lambda: _fit(head, rows, [], _table_head(), limit, False)),
    )
    for attempt in attempts:
        text = attempt()
        if text is not None:
            return text
    # 3. Even the head does not fit (a huge error list, a tiny limit): cut the head itself.
    note = _more_note(len(rows), False)
    if len(note) >= limit:
        return note[:limit]
    cut = join_blocks(head)[: limit - len(note) - 2].rstrip()
    return cut + "\n\n" + note
