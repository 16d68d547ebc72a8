"""Plan renderers: the same `Plan` as terminal text, JSON or a pull-request Markdown comment.

Each renderer masks sensitive fields itself (defence in depth) and never changes the plan.
"""

from __future__ import annotations

from reconciler.plan import Plan
from reconciler.render.jsonout import render_json
from reconciler.render.markdown import render_markdown
from reconciler.render.text import render_text

FORMATS = ("text", "json", "markdown")

__all__ = ["FORMATS", "render", "render_json", "render_markdown", "render_text"]


def render(plan: Plan, fmt: str = "text", color: bool = False) -> str:
    """Dispatch on `--format text|json|markdown`."""
    if fmt == "text":
        return render_text(plan, color)
    if fmt == "json":
        return render_json(plan)
    if fmt == "markdown":
        return render_markdown(plan)
    raise ValueError(f"unknown plan format {fmt!r}; expected one of: {', '.join(FORMATS)}")
