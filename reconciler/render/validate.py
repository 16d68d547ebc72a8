"""`recon validate`'s answer for a valid spec: a line with the counts and the dependency waves, or JSON."""

from __future__ import annotations

import json

from reconciler.runner import ValidateResult


def render_validate_text(r: ValidateResult) -> str:
    n, h, w, e = r.services, r.hosts, len(r.waves), r.externals
    ext = f" and {e} external{'s' * (e != 1)}" if e else ""
    lines = [f"Valid: {n} service{'s' * (n != 1)}{ext} on {h} host{'s' * (h != 1)}, "
             f"{w} dependency wave{'s' * (w != 1)} ({', '.join(r.files)})"]
    lines += [f"  wave {i}: {', '.join(wave)}" for i, wave in enumerate(r.waves, 1)]
    return "\n".join(lines) + "\n"


def render_validate_json(r: ValidateResult) -> str:
    return json.dumps({"valid": True, "files": r.files, "services": r.services, "hosts": r.hosts,
                       "externals": r.externals, "waves": r.waves}, indent=2) + "\n"
