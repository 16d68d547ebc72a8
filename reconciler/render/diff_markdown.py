"""A spec review (`recon diff --format markdown`) as a pull-request comment that never exceeds a size limit."""

from __future__ import annotations

import html
from collections.abc import Callable

from reconciler.render.common import printable
from reconciler.render.diff_text import counts_words, field_line, ref_words
from reconciler.render.markdown import cell, code_fence, join_blocks, largest_fitting
from reconciler.review.model import WORKTREE_REFS, ItemDiff, Risk, SpecDiff, clip

MARKDOWN_LIMIT = 65000
MD_RISKS_SHOWN = 50


def _md_title(diff: SpecDiff) -> str:
    head = "### recon diff: " + (counts_words(diff) or ("no changes" if diff.computed else "HEAD could not be read"))
    ne, nw = len(diff.errors), len(diff.warnings)
    if ne:
        head += f" · ❌ {ne} error{'s' * (ne != 1)}"
    if nw:
        head += f" · ⚠️ {nw} warning{'s' * (nw != 1)}"
    return head


def _md_refs(diff: SpecDiff) -> str:
    def ref(name: str, rev: str | None) -> str:
        if name in WORKTREE_REFS:
            return "working tree"
        return f"`{cell(name)}`" + (f" (`{rev[:7]}`)" if rev and rev[:7] != name[:7] else "")

    files = f" · spec: {', '.join('`' + cell(f) + '`' for f in diff.layers())}" if diff.files else ""
    return f"{ref(diff.base, diff.base_rev)} → {ref(diff.head, diff.head_rev)}{files}"


def _md_risk(r: Risk) -> str:
    icon = "❌" if r.level == "error" else "⚠️"
    at = f" _({cell(r.where)})_" if r.where else ""
    return f"- {icon} **{cell(r.subject)}**: {cell(r.message)}{at}\n"


def _md_row(item: ItemDiff, risky: dict[str, str]) -> str:
    icon = risky.get(item.name, "")
    return (f"| {cell(item.name)} | {item.op} {item.kind}{(' ' + icon) if icon else ''} | "
            f"{cell(clip(item.summary, 200))} |\n")


def _md_details(label: str, item: ItemDiff) -> str:
    summary = html.escape(printable(f"{item.op} {label}{item.name}: {clip(item.summary, 200)}"), quote=False)
    body = "\n".join(field_line(f) for f in item.fields)
    fence = code_fence(body)
    return f"<details><summary>{summary}</summary>\n\n{fence}diff\n{body}\n{fence}\n\n</details>\n\n"


def render_diff_markdown(diff: SpecDiff, limit: int = MARKDOWN_LIMIT) -> str:
    """A pull-request comment: summary line, risks, a table of services (and hosts), the field diffs
    folded in <details>. At most MD_RISKS_SHOWN risks are listed (errors first; the table marks every
    risky row with ❌/⚠️). Never longer than `limit`: field details are dropped from the end first, then
    notes, then table rows, then risks, and a closing note says what is not shown."""
    head = [_md_title(diff), _md_refs(diff)]
    if not diff.computed:
        head.append(f"No diff: the spec at {cell(ref_words(diff.head, None))} could not be read (see Risks).")
    elif not diff.has_changes:
        head.append(f"No changes: the spec at {cell(ref_words(diff.head, None))} describes the same services and "
                    f"hosts as at {cell(ref_words(diff.base, None))}.")
    elif not diff.risks:
        head.append("No risks found.")
    risk_items = [_md_risk(r) for r in diff.risks]
    risky: dict[str, str] = {}
    for r in diff.risks:
        if risky.get(r.subject) != "❌":
            risky[r.subject] = "❌" if r.level == "error" else "⚠️"
    svc_rows = [_md_row(i, risky) for i in diff.services]
    host_rows = [_md_row(i, {k.removeprefix("host "): v for k, v in risky.items()}) for i in diff.hosts]
    rows = svc_rows + host_rows
    details = [_md_details("", i) for i in diff.services if i.fields]
    details += [_md_details("host ", i) for i in diff.hosts if i.fields]
    notes = ["**Notes**\n\n" + "".join(f"- {cell(n)}\n" for n in diff.notes)] if diff.notes else []
    rerun = f"`{cell(diff.rerun_command())}`"

    def build(nr: int, nrows: int, nd: int, with_notes: bool) -> str:
        parts = list(head)
        if nr:
            parts.append("**Risks**\n\n" + "".join(risk_items[:nr]))
        svc_k = min(nrows, len(svc_rows))
        if svc_k:
            parts.append("| service | change | what |\n| --- | --- | --- |\n" + "".join(svc_rows[:svc_k]))
        host_k = max(0, nrows - len(svc_rows))
        if host_k:
            parts.append("| host | change | what |\n| --- | --- | --- |\n" + "".join(host_rows[:host_k]))
        parts.append("".join(details[:nd]))
        hidden = []
        if nr < len(risk_items):
            hidden.append(f"{len(risk_items) - nr} of {len(risk_items)} risks")
        if nrows < len(rows):
            hidden.append(f"{len(rows) - nrows} of {len(rows)} table rows")
        if nd < len(details):
            hidden.append(f"the field changes of {len(details) - nd} of {len(details)} services and hosts")
        if notes and not with_notes:
            hidden.append("notes")
        if hidden:
            parts.append(f"_Not shown (comment size limit): {', '.join(hidden)}. Run {rerun} for the full diff._")
        elif with_notes:
            parts += notes
        return join_blocks(parts)

    # Errors come first among the risks; past MD_RISKS_SHOWN the table's ❌/⚠️ marks tell the rest.
    nr, nrows, nd = min(len(risk_items), MD_RISKS_SHOWN), len(rows), len(details)
    attempts: list[Callable[[], str | None]] = [
        lambda: build(nr, nrows, nd, True) if len(build(nr, nrows, nd, True)) <= limit else None,
        lambda: largest_fitting(lambda k: build(nr, nrows, k, False), nd, limit),
        lambda: largest_fitting(lambda k: build(nr, k, 0, False), nrows, limit),
        lambda: largest_fitting(lambda k: build(k, 0, 0, False), nr, limit),
    ]
    for attempt in attempts:
        text = attempt()
        if text is not None:
            return text
    note = f"\n\n_… cut at the comment size limit; run {rerun}._"
    if len(note) >= limit:
        return note.strip()[:limit]
    return build(0, 0, 0, False)[: limit - len(note)].rstrip() + note

