"""Each service's Prometheus metrics and systemd's own figures, read over SSH in one command per host.
Pure here: the host script, the parsing of its answer (the exposition text with prometheus_client's
parser), and the re-exposition with `host` and `service` labels; `runner.run_metrics` does the I/O."""

from __future__ import annotations

import base64
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SYSTEMD_PROPS = ("CPUUsageNSec", "MemoryCurrent", "TasksCurrent", "NRestarts", "ActiveState")
# systemd's figures, re-exposed under recon's names: (property, metric, type, help, scale)
SYSTEMD_SERIES = (
    ("CPUUsageNSec", "recon_systemd_cpu_seconds_total", "counter", "CPU time of the unit (systemd).", 1e-9),
    ("MemoryCurrent", "recon_systemd_memory_bytes", "gauge", "Memory of the unit's cgroup (systemd).", 1.0),
    ("TasksCurrent", "recon_systemd_tasks", "gauge", "Tasks in the unit's cgroup (systemd).", 1.0),
    ("NRestarts", "recon_systemd_restarts_total", "counter", "Automatic restarts of the unit (systemd).", 1.0),
)


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Family:
    name: str
    type: str
    help: str
    samples: list[Sample] = field(default_factory=list)


@dataclass
class ServiceMetrics:
    host: str
    service: str
    systemd: dict[str, float | str | None] = field(default_factory=dict)
    families: list[Family] = field(default_factory=list)
    error: str | None = None          # the endpoint did not answer, or not in the exposition format


def host_script(targets: Iterable[tuple[str, str, str | None]]) -> str:
    """One read-only command: each (service, unit, metrics URL) fetched with curl (no proxy, no URL
    globbing), framed and base64-encoded, then one `systemctl show` for every unit."""
    targets = list(targets)
    q = shlex.quote
    lines = ["set +e"]
    for service, _unit, url in targets:
        if url:
            lines.append(f"printf 'METRICS\\t%s\\t' {q(service)}; "
                         f"curl -q -g -s -f --noproxy '*' -m 3 {q(url)} | base64 -w0; printf '\\n'")
    units = " ".join(q(u) for _, u, _ in targets)
    lines.append(f"systemctl show --no-pager -p Id,{','.join(SYSTEMD_PROPS)} {units}")
    return "\n".join(lines) + "\n"


def _number(v: str | None) -> float | None:
    if v is None or not v.strip().isdigit():       # "[not set]", or 2^64-1 for "no figure"
        return None
    n = int(v)
    return None if n >= 2**64 - 1 else float(n)


def parse_answer(host: str, text: str, targets: Iterable[tuple[str, str, str | None]]) -> list[ServiceMetrics]:
    from prometheus_client.parser import text_string_to_metric_families

    targets = list(targets)
    by_unit = {u: s for s, u, _ in targets}
    out = {s: ServiceMetrics(host, s) for s, _, _ in targets}
    for s, _, url in targets:
        if not url:
            out[s].error = "no metrics URL (no port and no metrics.http)"
    props: dict[str, str] = {}

    def flush() -> None:
        svc = by_unit.get(props.get("Id", ""))
        if svc:
            m = out[svc]
            for prop in SYSTEMD_PROPS:
                m.systemd[prop] = props.get(prop) if prop == "ActiveState" else _number(props.get(prop))
        props.clear()

    for line in text.splitlines():
        if line.startswith("METRICS\t"):
            _, svc, payload = [*line.split("\t", 2), ""][:3]
            if svc not in out:
                continue
            try:
                body = base64.b64decode(payload).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                body = ""
            if not body:
                out[svc].error = "the metrics endpoint did not answer"
                continue
            try:
                out[svc].families = [Family(f.name, f.type, f.documentation,
                                            [Sample(x.name, dict(x.labels), float(x.value)) for x in f.samples])
                                     for f in text_string_to_metric_families(body)]
            except (ValueError, TypeError) as exc:
                out[svc].error = f"not the Prometheus text format ({exc})"
        elif not line.strip():
            flush()
        elif "=" in line:
            k, _, v = line.partition("=")
            props[k] = v
    flush()
    return list(out.values())


def exposition(services: Iterable[ServiceMetrics]) -> str:
    """Everything as one Prometheus text exposition, each sample labelled with its host and service
    (families merged across services, as the format requires), systemd's figures as recon_systemd_*."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import Metric

    services = list(services)

    class _Collector:
        def collect(self) -> Iterable[Any]:
            merged: dict[str, Metric] = {}
            for m in services:
                for f in m.families:
                    metric = merged.get(f.name)
                    if metric is None:
                        metric = merged[f.name] = Metric(f.name, f.help, f.type)
                    for smp in f.samples:
                        metric.add_sample(smp.name, {**smp.labels, "host": m.host, "service": m.service}, smp.value)
            for prop, name, kind, help_text, scale in SYSTEMD_SERIES:
                metric = Metric(name.removesuffix("_total") if kind == "counter" else name, help_text, kind)
                for m in services:
                    v = m.systemd.get(prop)
                    if isinstance(v, float):
                        metric.add_sample(name, {"host": m.host, "service": m.service}, v * scale)
                merged[name] = metric
            yield from merged.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())  # type: ignore[arg-type]
    return generate_latest(registry).decode()
