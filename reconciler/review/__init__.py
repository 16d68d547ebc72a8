"""`recon diff`: review a spec change without touching any host, from loading to the rendered review.

The stages, each in its own module:
- `review.load`: the spec at BASE and at HEAD (two files, two git refs or a ref and the working
  tree), parsed, layered and checked like `recon validate --skip-artifacts`;
- `review.compare`: per service and per host what changes (versions, artifacts, config keys by
  dotted path, env, secret names, limits, hosts, dependencies, ports, health, hardening…);
- `review.risks`: what is risky to merge (HEAD invalid, a removed service still depended on, a
  cycle, a port clash, a major bump or a downgrade, a lower memory_max, weaker hardening…);
- `review.model`: the result as data (`SpecDiff`); `render.diff_text`, `render.diff_markdown` and
  `render.diff_json` turn it into terminal text, a pull-request comment or JSON.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from reconciler.review.compare import host_diffs, service_diffs
from reconciler.review.load import Side, load_sides
from reconciler.review.model import FieldDiff, ItemDiff, Risk, SpecDiff
from reconciler.review.risks import find_risks
from reconciler.spec.merge import merge_layers


def _looks_like_a_layer(side: Side) -> bool:
    """A file with a service but no version for it is an override meant to be layered over others."""
    return any("version" not in svc for svc in side.raw_services().values())


def load_diff(base: str, head: str, files: Sequence[str] = (), cwd: str | None = None) -> SpecDiff:
    """Load both sides and compute the diff; ReconError for bad refs, paths or usage."""
    cwd = cwd or os.getcwd()
    notes: list[str] = []
    files = list(files)
    base_side, head_side, layer_at = load_sides(base, head, files, cwd, notes)
    diff = SpecDiff(base=base, head=head, base_rev=base_side.rev, head_rev=head_side.rev,
                    base_files=list(base_side.merged.files), head_files=list(head_side.merged.files),
                    files=files, head_problems=head_side.problems, base_problems=base_side.problems,
                    notes=notes, layer_at=layer_at)
    if not files and _looks_like_a_layer(head_side):
        notes.append(f"{head} gives services without a version: if it is a layer over other spec files, name "
                     f"them with -f: recon diff {base} {head} -f SPEC…")
    if base_side.broken:
        notes.append(f"the spec at {base_side.label} could not be read; every service shows as added")
        base_side = Side(base_side.label, base_side.rev, merge_layers([]), base_side.problems)
    if head_side.broken:
        diff.computed = False
    else:
        diff.services = service_diffs(base_side, head_side)
        diff.hosts = host_diffs(base_side, head_side)
    diff.risks = find_risks(base_side, head_side, diff)
    return diff


__all__ = ["FieldDiff", "ItemDiff", "Risk", "SpecDiff", "load_diff"]
