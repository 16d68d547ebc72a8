"""Renderers: results as terminal text, JSON or a pull-request Markdown comment; `render` and
`render_diff` dispatch on `--format`.

Each plan renderer masks sensitive fields itself (defence in depth) and never changes the plan. The
package imports nothing heavy itself: `recon validate` and `recon history` use one small renderer
module each and must not pay for rich, the plan and its renderers (`render_text`, `render_json`,
`render_markdown` are loaded on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

FORMATS = ("text", "json", "markdown")

if TYPE_CHECKING:
    from reconciler.plan import Plan
    from reconciler.render.jsonout import render_json
    from reconciler.render.markdown import render_markdown
    from reconciler.render.text import render_text
    from reconciler.review.model import SpecDiff

__all__ = ["FORMATS", "render", "render_diff", "render_json", "render_markdown", "render_text"]
_LAZY = {"render_json": "reconciler.render.jsonout", "render_markdown": "reconciler.render.markdown",
         "render_text": "reconciler.render.text"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    """A plan as `--format text|json|markdown`."""
    if fmt == "text":
        from reconciler.render.text import render_text

        return render_text(plan, color)
    if fmt == "json":
        from reconciler.render.jsonout import render_json

        return render_json(plan)
    if fmt == "markdown":
        from reconciler.render.markdown import render_markdown

        return render_markdown(plan)
    raise ValueError(f"unknown plan format {fmt!r}; expected one of: {', '.join(FORMATS)}")
