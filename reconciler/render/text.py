"""The terminal form of a plan: reads like `terraform plan`, coloured through rich or plain.

Layout: a header, the marks used, the changes grouped by dependency wave, per change a line
`MARK ADDRESS: ACTION — REASON`, its field lines (`~ config.server.workers: 8 → 16`, drift marked
`(drift: changed outside recon)`, secrets only as `(sensitive)`) and what it does to the process
(`→ will restart`); then errors, notes, ignored drift and the closing count line.

Marks: `+` create, `~` update, `±` replace, `-` delete, `↻` restart, `~` reload (shown with the word
"reload" and in cyan). With `color=False` the output holds no ANSI escape code at all.
"""

from __future__ import annotations

import io
import re

from rich.console import Console
from rich.text import Text

from reconciler.plan import Action, Change, FieldChange, Kind, Plan
from reconciler.render.common import (
    DRIFT_WORDS,
    VALUE_LIMIT,
    before_after,
    by_wave,
    effect_words,
    field_mark,
    is_drift,
    mark,
    printable,
    summary_line,
    wave_label,
)
from reconciler.render.terminal import output_width

ACTION_STYLES: dict[str, str] = {
    Action.CREATE: "green",
    Action.UPDATE: "yellow",
    Action.REPLACE: "magenta",
    Action.DELETE: "red",
    Action.RESTART: "cyan",
    Action.RELOAD: "cyan",
}
FIELD_STYLES: dict[str, str] = {"+": "green", "-": "red", "~": "yellow"}
DRIFT_STYLE = "bold bright_blue"
ERROR_STYLE = "bold red"
REASON_LIMIT = 160
INDENT_CHANGE = "  "
INDENT_FIELD = "      "
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


def _header(plan: Plan) -> Text:
    if plan.refresh_only:
        if plan.changes:
            return Text.assemble(("Drift:", "bold"), "\n",
                                 "The hosts have moved away from what recon last applied:")
        return Text("No drift. Your hosts match what recon last applied.", style="bold green")
    if plan.changes:
        return Text("recon will perform the following actions:", style="bold")
    if plan.errors:
        n = len(plan.errors)
        return Text(f"No changes on the hosts recon could reach ({n} could not be observed, see below).",
                    style="bold yellow")
    return Text("No changes. Your hosts match the spec.", style="bold green")


def _legend(plan: Plan) -> Text:
    present = {c.action for c in plan.changes}
    used = [a for a in ACTION_STYLES if a in present] + sorted(present - set(ACTION_STYLES))
    parts: list[tuple[str, str] | str] = ["Marks: "]
    for i, action in enumerate(used):
        if i:
            parts.append("  ")
        parts.append((f"{mark(action)} {action}", ACTION_STYLES.get(action, "")))
    return Text.assemble(*parts)


def _change_line(c: Change) -> Text:
    style = ACTION_STYLES.get(c.action, "")
    t = Text.assemble(
        INDENT_CHANGE,
        (mark(c.action), f"bold {style}".strip()),
        " ",
        (printable(c.address), "bold"),
        ": ",
        (printable(c.action), style),
    )
    if c.reason:
        t.append(" — ")
        t.append(_reason(c))
    if is_drift(c):
        t.append("  ")
        t.append("[drift]", style=DRIFT_STYLE)
    return t


def _reason(c: Change) -> str:
    text = printable(c.reason)
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"


def _field_lines(f: FieldChange, width: int) -> list[Text]:
    fm = field_mark(f)
    style = FIELD_STYLES[fm]
    b, a = before_after(f, min(VALUE_LIMIT, max(width - len(INDENT_FIELD) - 8, 20)))
    head = Text.assemble(INDENT_FIELD, (fm, style), " ", printable(f.path), ":")
    drift = Text.assemble("  ", (f"({DRIFT_WORDS})", DRIFT_STYLE)) if f.kind == Kind.DRIFT else Text()
    if fm == "+":
        body = Text.assemble(" ", (a, style))
    elif fm == "-":
        body = Text.assemble(" ", (b, style))
    else:
        body = Text.assemble(" ", b, (" → ", "dim"), (a, style))
    one = Text.assemble(head, body, drift)
    if one.cell_len <= width or fm != "~":
        return [one]
    # Too wide for one line: before and after each on their own line.
    pad = INDENT_FIELD + "    "
    return [Text.assemble(head, drift), Text.assemble(pad, ("- ", "red"), b),
            Text.assemble(pad, ("+ ", "green"), (a, style))]


def _change_block(c: Change, width: int) -> list[Text]:
    lines = [_change_line(c)]
    for f in c.fields:
        lines.extend(_field_lines(f, width))
    lines.append(Text.assemble(INDENT_FIELD, ("→ " + effect_words(c.effect), "cyan")))
    return lines


def _errors(plan: Plan) -> list[Text]:
    n = len(plan.errors)
    what, whose = ("host", "its") if n == 1 else ("hosts", "their")
    lines = [Text(f"Errors: {n} {what} could not be observed; {whose} services are not in this plan:",
                  style=ERROR_STYLE)]
    for err in plan.errors:
        first, *rest = printable(str(err), keep_newlines=True).splitlines() or [""]
        lines.append(Text.assemble("  ", ("✗ ", ERROR_STYLE), (first, "red")))
        lines.extend(Text("    " + more, style="red") for more in rest)
    return lines


def _refused(plan: Plan) -> list[Text]:
    n = len(plan.refused)
    lines = [Text(f"Refused: {n} thing{'s' if n != 1 else ''} recon does not own or will not use; "
                  "nothing is applied until this is fixed:", style=ERROR_STYLE)]
    lines.extend(Text.assemble("  ", ("✗ ", ERROR_STYLE), (printable(str(r)), "red")) for r in plan.refused)
    return lines


def _resources(plan: Plan) -> list[Text]:
    lines = [Text("Accounts and directories:", style="bold")]
    for r in plan.resources:
        create = r.action == "create"
        what = f"{r.kind} {r.name}"
        lines.append(Text.assemble(
            "  ", ("+" if create else "=", "green" if create else "dim"), " ", printable(f"{r.host}: {what}"),
            (" (will be created: " if create else " (") + printable(r.detail) + ")",
            (" — for " + ", ".join(r.services), "dim") if r.services else ""))
    return lines


def _notes(plan: Plan) -> list[Text]:
    lines = [Text("Notes:", style="bold")]
    lines.extend(Text("  • " + printable(str(n))) for n in plan.notes)
    return lines


def _ignored(plan: Plan) -> Text:
    n = len(plan.ignored_drift)
    shown = [printable(str(a)) for a in plan.ignored_drift[:5]]
    more = f", +{n - 5} more" if n > 5 else ""
    noun = "service differs" if n == 1 else "services differ"
    return Text.assemble(("Ignored drift: ", "bold"),
                         f"{n} {noun} only in fields listed under ignore_drift ({', '.join(shown)}{more}).")


def _renderables(plan: Plan, width: int) -> list[Text]:
    out: list[Text] = [_header(plan)]
    if plan.changes:
        out += [Text(), _legend(plan)]
        groups = by_wave(plan.changes)
        for wave, changes in groups:
            out.append(Text())
            if not (len(groups) == 1 and wave <= 0):
                out += [Text("# " + wave_label(wave, changes), style="dim bold"), Text()]
            for i, c in enumerate(changes):
                if i:
                    out.append(Text())
                out.extend(_change_block(c, width))
    if plan.resources:
        out += [Text(), *_resources(plan)]
    if plan.errors:
        out += [Text(), *_errors(plan)]
    if plan.refused:
        out += [Text(), *_refused(plan)]
    if plan.notes:
        out += [Text(), *_notes(plan)]
    if plan.ignored_drift:
        out += [Text(), _ignored(plan)]
    out += [Text(), Text(summary_line(plan), style="bold")]
    return out


def render_text(plan: Plan, color: bool, width: int | None = None) -> str:
    """The plan as terminal text, as wide as the terminal (`output_width`) unless `width` is given;
    `color=False` yields plain text without any ANSI escape code."""
    width = width or output_width()
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=width, highlight=False,
                      color_system="standard" if color else None, emoji=False, markup=False)
    console.print(Text("\n").join(_renderables(plan, width)))
    text = buf.getvalue()
    return text if color else _ANSI.sub("", text)
