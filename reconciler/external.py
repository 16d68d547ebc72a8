"""`external:` at run time: probing what recon does not deploy but services depend on (a database, a vault
backend), and deciding which planned starts they allow. Pure: the probe's shell text, its parsing, and the
decisions; the callers (apply, the observation of status and watch) run it on a host.

The probe only reads: `systemctl show` of the external's unit where it runs on the probing host, and one
`curl` of its health URL (its body checked against `health.expect_json` here, with Python's json). recon
never starts, stops, modifies or deletes an external's unit.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler import healthjson
from reconciler.spec.model import External, Service

q = shlex.quote


@dataclass(frozen=True)
class ExternalHealth:
    """One external as seen from one host."""

    name: str
    host: str
    unit: str | None = None            # its unit, when it runs on this host (else not looked at)
    state: str | None = None           # ActiveState/SubState of that unit
    url: str | None = None
    code: int | None = None            # HTTP status of the health URL (None: no answer)
    problem: str | None = None         # a 2xx answer without the `expect_json` fields
    want_status: int = 200

    @property
    def unit_ok(self) -> bool:
        return self.unit is None or (self.state or "").startswith("active/")

    @property
    def health_ok(self) -> bool:
        return self.url is None or (self.code == self.want_status and self.problem is None)

    @property
    def ok(self) -> bool:
        return self.unit_ok and self.health_ok

    def health_summary(self) -> str:
        if self.url is None:
            return "-"
        if self.code is None:
            return "no answer"
        return f"HTTP {self.code}" + (f", {self.problem}" if self.problem else "")

    def why(self) -> str:
        """What is wrong, in words: `unit surrealdb.service is inactive/dead; health: no answer`."""
        parts = []
        if not self.unit_ok:
            parts.append(f"unit {self.unit} is {self.state or 'unknown'}")
        if not self.health_ok:
            parts.append(f"health {self.url}: {self.health_summary()}")
        return "; ".join(parts) or "healthy"


def on_host(ext: External, host: str) -> bool:
    return host in ext.hosts


def probe_script(externals: Sequence[External], host: str) -> str:
    """Read-only: one line `EXT name state code body-base64` per external (state: its unit's
    ActiveState/SubState when it runs on `host`, else `-`; code `000`: no answer)."""
    lines = ["NL='\n'"]
    for ext in externals:
        unit = ext.unit if ext.unit and on_host(ext, host) else None
        lines.append("st=-; code=-; b=-")
        if unit:
            lines.append(f"st=$(systemctl show -p ActiveState,SubState --value {q(unit)} 2>/dev/null | "
                         "paste -sd/ -); st=${st:-unknown}")
        if ext.health_url:
            lines.append(f"out=$(curl -q -g -s --noproxy '*' -m 3 -w '\\n%{{http_code}}' {q(ext.health_url)} "
                         "2>/dev/null); code=${out##*\"$NL\"}; code=${code:-000}")
            if ext.health_expect_json:
                lines.append("b=$(printf '%s' \"${out%\"$NL\"*}\" | base64 -w0); b=${b:--}")
        lines.append(f"printf 'EXT\\t%s\\t%s\\t%s\\t%s\\n' {q(ext.name)} \"$st\" \"$code\" \"$b\"")
    return "\n".join(lines)


def parse_probe(out: str, externals: Sequence[External], host: str) -> dict[str, ExternalHealth]:
    """name → ExternalHealth from `probe_script`'s output; an external without a line is unknown (no answer)."""
    by_name = {e.name: e for e in externals}
    got: dict[str, ExternalHealth] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) not in (4, 5) or parts[0] != "EXT" or parts[1] not in by_name:
            continue
        ext = by_name[parts[1]]
        unit = ext.unit if ext.unit and on_host(ext, host) else None
        code = int(parts[3]) if parts[3].isdigit() and parts[3] != "000" else None
        problem = None
        if ext.health_url and ext.health_expect_json and code is not None and 200 <= code < 300:
            try:
                body = base64.b64decode(parts[4] if len(parts) == 5 and parts[4] != "-" else "").decode(
                    "utf-8", "replace")
            except ValueError:
                body = ""
            problem = healthjson.mismatch(dict(ext.health_expect_json), body)
        got[ext.name] = ExternalHealth(ext.name, host, unit, parts[2] if unit else None, ext.health_url, code,
                                       problem, ext.health_status)
    for ext in externals:
        if ext.name not in got:
            unit = ext.unit if ext.unit and on_host(ext, host) else None
            got[ext.name] = ExternalHealth(ext.name, host, unit, "unknown" if unit else None, ext.health_url, None,
                                           None, ext.health_status)
    return got


def needed_on(host: str, services: Iterable[Service], externals: Mapping[str, External]) -> list[External]:
    """The externals that services starting on `host` depend on, in name order."""
    names = sorted({x for s in services for x in s.external_deps if x in externals})
    return [externals[n] for n in names]


def shown_from(host: str, spec_services: Iterable[Service], externals: Mapping[str, External]) -> list[External]:
    """What `status` and `watch` probe from `host`: the externals that run there or that a service there needs."""
    deps = {x for s in spec_services if host in s.hosts for x in s.external_deps}
    return [e for n, e in sorted(externals.items()) if on_host(e, host) or n in deps]


def refusal(service: str, bad: Sequence[ExternalHealth]) -> str:
    """Why a dependent is not started: which external, which dependent, and why."""
    what = "; ".join(f"external {h.name} is unhealthy ({h.why()})" for h in bad)
    return f"not started: {what}; {service} depends on it (recon does not start or change an external)"
