"""`recon versions`: `service: version` per service; where hosts differ or the spec wants another
version, that is said on the same line."""

from __future__ import annotations

import json
from dataclasses import asdict

from reconciler.runner import ServiceVersions, VersionsResult


def _line(s: ServiceVersions) -> str:
    if not s.running:
        return f"{s.service}: unknown (no host could be read; spec {s.desired})"
    shown = {v: sorted(h for h, x in s.running.items() if x == v) for v in s.versions}
    if len(shown) == 1:
        (v,) = shown
        text = v or "not running"
    else:
        text = ", ".join(f"{v or 'not running'} on {', '.join(hs)}"
                         for v, hs in sorted(shown.items(), key=lambda kv: (kv[0] is None, str(kv[0]))))
    return f"{s.service}: {text}" + ("" if s.versions == {s.desired} else f" (spec {s.desired})")


def render_versions_text(result: VersionsResult) -> str:
    lines = [_line(s) for s in result.services]
    lines += [f"✗ {e}" for e in result.errors]
    return "\n".join(lines) + "\n"


def render_versions_json(result: VersionsResult) -> str:
    return json.dumps({"services": [asdict(s) for s in result.services], "errors": result.errors}, indent=2) + "\n"
