"""`recon state show` as text or JSON: lineage, serial, per host and service the recorded release, and the
locks. The secrets fingerprint (`env_hash`) is shown masked, as plans show secrets; the state holds no value."""

from __future__ import annotations

import json
from typing import Any

MASK = "(sensitive)"       # as reconciler.render.common.MASK (not imported: that module loads the plan model)


def _masked(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: (MASK if k == "env_hash" and v is not None else v) for k, v in rec.items()}


def state_doc(result: Any) -> dict[str, Any]:
    doc = json.loads(result.state.to_json())
    doc["hosts"] = {h: {s: _masked(r) for s, r in svcs.items()} for h, svcs in doc.get("hosts", {}).items()}
    return {"location": result.location, **doc, "locks": result.locks}


def render_state_json(result: Any) -> str:
    return json.dumps(state_doc(result), indent=2) + "\n"


def render_state_text(result: Any) -> str:
    st = result.state
    if not st.lineage:
        return f"No state in {result.location} yet.\n"
    lines = [f"State in {result.location}: lineage {st.lineage}, serial {st.serial}, updated {st.updated_at}"]
    for host in sorted(st.hosts):
        lines.append(f"  {host}")
        svcs = st.hosts[host]
        width = max(len(s) for s in svcs) if svcs else 0
        for name in sorted(svcs):
            r = svcs[name]
            extra = f"  (previous {r.previous_version})" if r.previous_version else ""
            stopped = f"  stopped by {r.stopped_by.get('user', '?')}" if r.stopped_by else ""
            secrets = f"  secrets {MASK}" if r.env_hash else ""
            lines.append(f"    {name.ljust(width)}  {r.version}  {r.status}  #{r.serial}  {r.applied_at}"
                         f"{extra}{stopped}{secrets}")
    if result.locks:
        lines.append("Locks:")
        for h in result.locks:
            hosts = ", ".join(h.get("hosts") or ["the whole state"])
            lines.append(f"  {hosts}: {h.get('user', '?')}@{h.get('host', '?')} (pid {h.get('pid', '?')}, since "
                         f"{h.get('time', '?')}, `{h.get('command', '?')}`, lock id {h.get('id', '?')})")
    else:
        lines.append("Locks: none")
    return "\n".join(lines) + "\n"


def render_push(result: Any, file: str) -> str:
    if not result.written:
        return f"{result.location} already holds this state (serial {result.serial}): nothing written.\n"
    return f"Pushed {file} to {result.location}: lineage {result.lineage}, serial {result.serial}.\n"


def render_migrate(result: Any) -> str:
    return (f"Migrated {result.source} → {result.target}: lineage {result.lineage}, serial {result.serial}, "
            f"{result.hosts} host(s), {result.history_copied} of {result.history_total} history entries copied.\n")
