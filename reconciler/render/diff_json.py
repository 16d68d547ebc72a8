"""A spec review as JSON (`recon diff --format json`): `format_version`, base, head, summary, items, risks."""

from __future__ import annotations

import json
from typing import Any

from reconciler.render.common import jsonable
from reconciler.review.model import ItemDiff, SpecDiff

FORMAT_VERSION = 1


def _item_dict(item: ItemDiff, with_versions: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": item.name, "change": item.kind, "summary": item.summary}
    if with_versions:
        out["version_before"] = item.version_before
        out["version_after"] = item.version_after
    out["where"] = item.where
    out["fields"] = [{"path": f.path, "change": f.kind, "before": jsonable(f.before), "after": jsonable(f.after),
                      "sensitive": f.sensitive, "where": f.where} for f in item.fields]
    return out


def diff_to_dict(diff: SpecDiff) -> dict[str, Any]:
    """The diff as plain JSON data (`recon diff --format json`), `format_version` first."""
    return {
        "format_version": FORMAT_VERSION,
        "base": {"ref": diff.base, "rev": diff.base_rev, "files": diff.base_files,
                 "valid": not diff.base_problems, "problems": [p.as_dict() for p in diff.base_problems]},
        "head": {"ref": diff.head, "rev": diff.head_rev, "files": diff.head_files,
                 "valid": diff.head_valid, "problems": [p.as_dict() for p in diff.head_problems]},
        "summary": {
            "computed": diff.computed,
            "has_changes": diff.has_changes,
            "services": diff.counts(diff.services),
            "hosts": diff.counts(diff.hosts),
            "errors": len(diff.errors),
            "warnings": len(diff.warnings),
        },
        "services": [_item_dict(i, True) for i in diff.services],
        "hosts": [_item_dict(i, False) for i in diff.hosts],
        "risks": [{"level": r.level, "subject": r.subject, "message": r.message, "where": r.where}
                  for r in diff.risks],
        "notes": list(diff.notes),
        "exit_code": diff.exit_code,
    }



def render_diff_json(diff: SpecDiff) -> str:
    """`diff_to_dict` as indented JSON text, non-ASCII kept, ending in a newline."""
    return json.dumps(diff_to_dict(diff), indent=2, ensure_ascii=False) + "\n"
