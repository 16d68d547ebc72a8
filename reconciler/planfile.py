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


# What each pinned fact is called in a staleness message.
_WORDS = {"version": "version", "artifact": "artifact sha256", "config": "config", "unit": "unit file",
          "secrets": "secrets", "current": "release `current` points at", "releases": "kept releases",
          "binary_sha": "binary sha256", "env_hash": "env file", "active": "ActiveState",
          "memory_max": "MemoryMax", "running": "running version", "drop_ins": "drop-ins"}
_SECRET_KEYS = frozenset({"secrets", "env_hash"})   # salted fingerprints: say that they moved, never show them


def _show(key: str, value: Any) -> str:
    if key in _SECRET_KEYS:
        return "(sensitive)"
    if value is None:
        return "absent"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _moved(scope: str, then: Any, now: Any) -> list[str]:
    """One reason per service and field that differs between two `{host: {service: {field: value}}}` maps."""
    if not isinstance(then, dict) or not isinstance(now, dict):   # a plan saved by an older recon
        return [] if then == now else [f"the {scope} changed since the plan was made"]
    out = []
    for host in sorted(set(then) | set(now)):
        a, b = then.get(host) or {}, now.get(host) or {}
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                out.append(f"host {host}: the {scope} changed since the plan was made")
            continue
        for svc in sorted(set(a) | set(b)):
            fa, fb = a.get(svc), b.get(svc)
            where = f"{host}/{svc}"
            if fa is None or fb is None:
                out.append(f"{where}: {'appeared in' if fa is None else 'is gone from'} the {scope}")
                continue
            for key in sorted(set(fa) | set(fb)):
                if fa.get(key) != fb.get(key):
                    out.append(f"{where}: {_WORDS.get(key, key)} {_show(key, fa.get(key))} → "
                               f"{_show(key, fb.get(key))} ({scope})")
    return out


def stale_reasons(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Why a saved plan no longer matches, naming host, service and field with the values then and now.

    A plan is stale when anything its changes were computed from moved: the desired release of a
    service (spec or secret), an observed fact of a service (which release `current` points at, the
    kept releases, binary, config, unit, env file, drop-ins, ActiveState, MemoryMax, the running
    version), recon's state serial, or its lineage. What does not change the plan does not make it
    stale: a restart by hand (same release, still active), memory use, health timings."""
    reasons = _moved("spec", saved.get("spec"), now.get("spec"))
    now_hosts = now.get("hosts") or {}
    saved_hosts = saved.get("hosts") or {}
    for host in sorted(saved_hosts):
        if host not in now_hosts:
            reasons.append(f"host {host} could not be observed now")
    reasons += _moved("host", {h: v for h, v in saved_hosts.items() if h in now_hosts},
                      {h: v for h, v in now_hosts.items() if h in saved_hosts})
    if saved.get("state_serial") != now.get("state_serial"):
        reasons.append(f"recon's state moved (serial {saved.get('state_serial')} → {now.get('state_serial')}): "
                       "another apply ran")
    if saved.get("lineage") != now.get("lineage"):
        reasons.append("the plan was made against another state (lineage differs)")
    return reasons
