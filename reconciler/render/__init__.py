"""Plan renderers: the same `Plan` as terminal text, JSON or a pull-request Markdown comment.

Each renderer masks sensitive fields itself (defence in depth) and never changes the plan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.plan import Plan
from reconciler.render.jsonout import render_json
from reconciler.render.markdown import render_markdown
from reconciler.render.text import render_text

FORMATS = ("text", "json", "markdown")

if TYPE_CHECKING:
    from reconciler.review.model import SpecDiff

__all__ = ["FORMATS", "render", "render_diff", "render_json", "render_markdown", "render_text"]


def render_diff(diff: SpecDiff, fmt: str = "text", color: bool = False) -> str:
    """A `recon diff` review as `--format text|json|markdown`."""
    if fmt == "json":
        from reconciler.render.diff_json import render_diff_json

        return render_diff_json(diff)
    if fmt == "markdown":
        from reconciler.render.diff_markdown import render_diff_markdown

        return render_diff_markdown(diff) + "\n"
    if fmt == "text":
        from reconciler.render.diff_text import render_diff_text

        return render_diff_text(diff, color)
    raise ValueError(f"unknown diff format {fmt!r}; expected one of: {', '.join(FORMATS)}")


def render(plan: Plan, fmt: str = "text", color: bool = False) -> str:
    """Dispatch on `--format text|json|markdown`."""
    if fmt == "text":
        return render_text(plan, color)
    if fmt == "json":
        return render_json(plan)
    if fmt == "markdown":
        return render_markdown(plan)
    raise ValueError(f"unknown plan format {fmt!r}; expected one of: {', '.join(FORMATS)}")
