"""A spec review (`recon diff`) as terminal text, terraform-like `+ ~ -`; also its lines for Markdown."""

from __future__ import annotations

import io
import re
from typing import Any

from rich.text import Text

from reconciler.render.common import printable, short
from reconciler.review.compare import before_after
from reconciler.review.model import KIND_WORDS, WORKTREE_REFS, FieldDiff, SpecDiff

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _short_sha(v: Any) -> Any:
    return v[:12] + "…" if isinstance(v, str) and _SHA256.fullmatch(v) else v


def field_line(f: FieldDiff) -> str:
    """`~ config.server.workers: 8 → 16`, `+ hosts: node2`, `- env.DEBUG: 1`."""
    if f.path.endswith("sha256"):  # 64 hex digits twice make a line nobody reads: 12 tell them apart
        f = FieldDiff(f.path, f.op, *(_short_sha(v) for v in (f.before, f.after)))
    if f.op == "+":
        value = short(f.after, 80)
    elif f.op == "-":
        value = short(f.before, 80)
    else:
        b, a = before_after(f)
        value = f"{b} → {a}"
    note = "  (source only; secret values are never read)" if f.path.startswith("secrets.") else ""
    return f"{f.op} {printable(f.path)}: {value}{note}"


def counts_words(diff: SpecDiff) -> str:
    """`2 services changed, 1 service added; 1 host removed` (empty when nothing changes)."""
    parts = []
    for what, items in (("service", diff.services), ("host", diff.hosts)):
        if items:
            c = diff.counts(items)
            parts.append(", ".join(f"{n} {what}{'s' * (n != 1)} {w}" for w, n in c.items() if n))
    return "; ".join(parts)


def _count_line(diff: SpecDiff) -> str:
    ne, nw = len(diff.errors), len(diff.warnings)
    risk = f"Risks: {ne} error{'s' * (ne != 1)}, {nw} warning{'s' * (nw != 1)}." if ne or nw else "No risks found."
    words = counts_words(diff)
    if not diff.computed:
        return f"No diff. {risk}"
    return f"Diff: {words}. {risk}" if words else f"No changes. {risk}"


def ref_words(ref: str, rev: str | None) -> str:
    """`HEAD~1 (35bc09f)`, `working tree`, or the ref (a file name) as given."""
    if ref in WORKTREE_REFS:
        return "working tree"
    return f"{ref} ({rev[:7]})" if rev and rev[:7] != ref[:7] else ref


def render_diff_text(diff: SpecDiff, color: bool) -> str:
    """Terminal text, terraform-like; colour through rich when `color`, no ANSI code at all otherwise."""
    styles = {"+": "green", "~": "yellow", "-": "red"}
    lines: list[Text] = [Text.assemble(("recon diff: ", "bold"), printable(ref_words(diff.base, diff.base_rev)),
                                       " → ", printable(ref_words(diff.head, diff.head_rev)))]
    if diff.files:
        lines.append(Text("Spec files: " + printable(", ".join(diff.layers())), style="dim"))
    lines.append(Text())
    if not diff.computed:
        lines.append(Text(f"No diff: the spec at {printable(ref_words(diff.head, None))} could not be read "
                          "(see Risks).", style="bold red"))
    elif not diff.has_changes:
        lines.append(Text(f"No changes: the spec at {printable(ref_words(diff.head, None))} describes the same "
                          f"services and hosts as at {printable(ref_words(diff.base, None))}.", style="bold green"))
    else:
        present = [op for op in ("+", "~", "-") if any(i.op == op for i in (*diff.services, *diff.hosts))]
        marks = Text("Marks:")
        for i, op in enumerate(present):
            marks.append("  " if i else " ")
            marks.append(f"{op} {KIND_WORDS[op]}", styles[op])
        lines.append(marks)
        for label, items in (("", diff.services), ("host ", diff.hosts)):
            for item in items:
                lines.append(Text())
                # A summary that says all its one field line says is left out: each change prints once.
                summary = "" if item.summary_in_full else ": " + printable(item.summary)
                lines.append(Text.assemble("  ", (item.op, f"bold {styles[item.op]}"), " ",
                                           (label + printable(item.name), "bold"), summary))
                for f in item.fields:
                    lines.append(Text.assemble("      ", (f.op, styles[f.op]), field_line(f)[1:]))
    if diff.risks:
        lines += [Text(), Text("Risks:", style="bold")]
        for r in diff.risks:
            mark, style = ("✗ error  ", "bold red") if r.level == "error" else ("! warning", "bold yellow")
            at = f"  ({printable(r.where)})" if r.where else ""
            lines.append(Text.assemble("  ", (mark, style), " ", (printable(r.subject), "bold"), ": ",
                                       printable(r.message), (at, "dim")))
    if diff.notes:
        lines += [Text(), Text("Notes:", style="bold")]
        lines += [Text("  • " + printable(n)) for n in diff.notes]
    lines += [Text(), Text(_count_line(diff), style="bold")]
    text = Text("\n").join(lines)
    if not color:
        return text.plain + "\n"
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, force_terminal=True, color_system="standard", width=200, highlight=False, emoji=False,
            markup=False).print(text, soft_wrap=True)
    return buf.getvalue()
