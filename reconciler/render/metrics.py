"""`recon metrics` as text (per host and service: systemd's figures, then each series) or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict

from reconciler.runner import MetricsResult


def _fmt(v: float) -> str:
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else f"{v:.6g}"


def _systemd_line(sd: dict[str, float | str | None]) -> str:
    cpu, mem, tasks, restarts = (sd.get(k) for k in ("CPUUsageNSec", "MemoryCurrent", "TasksCurrent", "NRestarts"))
    parts = [f"state {sd.get('ActiveState') or '?'}",
             f"cpu {cpu / 1e9:.2f}s" if isinstance(cpu, float) else "cpu -",
             f"memory {mem / 1048576:.1f}M" if isinstance(mem, float) else "memory -",
             f"tasks {_fmt(tasks)}" if isinstance(tasks, float) else "tasks -",
             f"restarts {_fmt(restarts)}" if isinstance(restarts, float) else "restarts -"]
    return "  ".join(parts)


def render_metrics_text(result: MetricsResult) -> str:
    lines: list[str] = []
    for m in result.services:
        lines.append(f"{m.host}/{m.service}  {_systemd_line(m.systemd)}")
        if m.error:
            lines.append(f"  ✗ {m.error}")
        for f in m.families:
            for s in f.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                lines.append(f"  {s.name}{'{' + labels + '}' if labels else ''} {_fmt(s.value)}")
    lines += [f"✗ {e}" for e in result.errors]
    return "\n".join(lines) + "\n"


def render_metrics_json(result: MetricsResult) -> str:
    return json.dumps({"services": [asdict(m) for m in result.services], "errors": result.errors}, indent=2) + "\n"
