"""Saved plans: write a plan with its fingerprints, read it back, and say why it is stale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.errors import ReconError
from reconciler.plan import FORMAT_VERSION, Plan
from reconciler.state import atomic_write

KIND = "recon-plan"


def save_plan(plan: Plan, path: str | Path) -> None:
    doc = {"kind": KIND, **plan.to_dict()}
    atomic_write(Path(path), (json.dumps(doc, indent=2, default=str) + "\n").encode(), mode=0o600)


def load_plan(path: str | Path) -> Plan:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReconError(f"plan file {path} not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReconError(f"plan file {path} is not a recon plan ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise ReconError(f"plan file {path} is not a recon plan (made by `recon plan -o`)")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ReconError(f"plan file {path} has format_version {doc.get('format_version')}; "
                         f"this recon reads {FORMAT_VERSION}")
    try:
        return Plan.from_dict(doc)
    except (TypeError, KeyError) as exc:
        raise ReconError(f"plan file {path} is damaged ({exc})") from None


def stale_reasons(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Why a saved plan no longer matches: the spec, a host, or recon's state moved."""
    reasons = []
    if saved.get("spec") != now.get("spec"):
        reasons.append("the spec (or a secret) changed since the plan was made")
    for host, fp in (saved.get("hosts") or {}).items():
        cur = (now.get("hosts") or {}).get(host)
        if cur is None:
            reasons.append(f"host {host} could not be observed now")
        elif cur != fp:
            reasons.append(f"host {host} changed since the plan was made")
    if saved.get("state_serial") != now.get("state_serial"):
        reasons.append(f"recon's state moved (serial {saved.get('state_serial')} → {now.get('state_serial')}): "
                       "another apply ran")
    if saved.get("lineage") != now.get("lineage"):
        reasons.append("the plan was made against another state (lineage differs)")
    return reasons
