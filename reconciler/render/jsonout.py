"""The machine form of a plan: stable, indented JSON with `format_version` first (see docs/plan-format.md).

The document is a superset of `Plan.to_dict()`, so `Plan.from_dict(json.loads(render_json(plan)))`
gives the plan back. Sensitive fields are masked here again, whatever the data held.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.plan import FORMAT_VERSION, Change, FieldChange, Plan
from reconciler.render.common import counts, drift_count, field_values, is_drift, jsonable


def _field(f: FieldChange) -> dict[str, Any]:
    before, after = field_values(f)
    return {
        "path": f.path,
        "before": jsonable(before),
        "after": jsonable(after),
        "kind": f.kind,
        "sensitive": bool(f.sensitive),
        "part": f.part,
        "spec_path": f.spec_path,
    }


def _change(c: Change) -> dict[str, Any]:
    return {
        "address": c.address,
        "host": c.host,
        "service": c.service,
        "action": c.action,
        "effect": c.effect,
        "reason": c.reason,
        "wave": c.wave,
        "drift": is_drift(c),
        "from_version": c.from_version,
        "to_version": c.to_version,
        "fields": [_field(f) for f in c.fields],
    }


def plan_document(plan: Plan) -> dict[str, Any]:
    """The JSON document as Python data, keys in their documented order."""
    return {
        "format_version": FORMAT_VERSION,
        "refresh_only": bool(plan.refresh_only),
        "summary": {**counts(plan), "drift": drift_count(plan), "total": len(plan.changes)},
        "changes": [_change(c) for c in plan.changes],
        "waves": [list(w) for w in plan.waves],
        "errors": [str(e) for e in plan.errors],
        "notes": [str(n) for n in plan.notes],
        "ignored_drift": [str(a) for a in plan.ignored_drift],
        "fingerprints": jsonable(dict(sorted(plan.fingerprints.items(), key=lambda kv: str(kv[0])))),
        "spec_files": [str(s) for s in plan.spec_files],
        "resources": [{"host": r.host, "kind": r.kind, "name": r.name, "action": r.action,
                       "services": [str(x) for x in r.services], "detail": r.detail} for r in plan.resources],
        "refused": [str(r) for r in plan.refused],
    }


def render_json(plan: Plan) -> str:
    """Indented JSON (2 spaces, UTF-8 text, no trailing newline); the same plan always gives the same text."""
    return json.dumps(plan_document(plan), indent=2, ensure_ascii=False, allow_nan=False)
