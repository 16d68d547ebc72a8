"""Benchmark of the pure plan: `make_plan` over 1000 services × ~20 fields, 0 % and 10 % changed.

    .venv/bin/python bench/plan_pure.py [--services 1000] [--hosts 10] [--runs 15]

Inputs are built directly (no spec files, no hosts): a DesiredService per service through the spec
model, an ObservedService that matches it (or differs in one field for the changed 10 %) and the
ServiceRecord apply would have written. Each run plans from cold caches (the parse caches in
reconciler.plan are cleared first, as in a fresh `recon plan` process); the warm column keeps them.
Goals: < 50 ms with nothing changed, < 200 ms with 10 % changed. Prints a Markdown table; exits 1
when a goal is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconciler import plan as planmod
from reconciler.desired import DesiredService, desired_service
from reconciler.observe import Health, ObservedHost, ObservedService
from reconciler.plan import make_plan, unit_limits
from reconciler.spec.model import Host, build_service
from reconciler.state import ServiceRecord, State

SALT = "bench-lineage"
GOALS_MS = {0: 50.0, 10: 200.0}
KINDS = ("config", "version", "unit", "stopped", "live", "secrets", "binary", "health", "config_added",
         "disabled")


def build_desired(n_services: int, n_hosts: int) -> dict[str, dict[str, DesiredService]]:
    hosts = [Host(f"node{h + 1}", f"10.0.{h // 250}.{h % 250 + 1}") for h in range(n_hosts)]
    out: dict[str, dict[str, DesiredService]] = {h.name: {} for h in hosts}
    wave = max(1, n_services // 10)            # ten dependency waves
    for i in range(n_services):
        name = f"svc-{i:04d}"
        host = hosts[i % n_hosts]
        raw: dict[str, Any] = {
            "version": f"1.{i % 7}.0",
            "artifact": {"path": f"artifacts/{name}", "sha256": f"{i:064x}"},
            "port": 10000 + i,
            "args": ["--config", "{config_path}"],
            "depends_on": [f"svc-{i - wave:04d}"] if i >= wave else [],
            "type": "notify",
            "restart": {"policy": "on-failure", "delay_s": 1, "watchdog_s": 30},
            "limits": {"memory_max": "256M", "memory_high": "192M", "cpu_quota": "50%", "tasks_max": 64,
                       "nofile": 65536},
            "hardening": {"no_new_privileges": True, "private_tmp": True, "protect_system": "strict",
                          "protect_home": True},
            "health": {"http": "http://{address}:{port}/health", "timeout_s": 5},
            "env": {"LOG_LEVEL": "info"},
            "secrets": {"TOKEN": {"from_env": "TOKEN"}} if i % 3 == 0 else {},
            "config": {
                "server": {"host": "{address}", "port": 10000 + i, "workers": 4, "timeout_s": 30},
                "storage": {"dir": "{data_dir}", "checkpoint_interval": 30, "compress": True},
                "api": {"enable_rest": True, "enable_grpc": False, "auth_required": True},
                "limits": {"max_tasks": 100 + i, "retry": 3, "backoff": "exponential"},
                "log": {"level": "info", "format": "json"},
            },
        }
        svc = build_service(name, raw, [host.name], None)
        out[host.name][name] = desired_service(svc, host, lambda _n, _s, i=i: f"token-{i}")
    return out


def _timespan(usec: int) -> str:
    return f"{usec // 1000}ms" if usec < 1_000_000 else f"{usec / 1_000_000:.6f}s"


def observed_for(d: DesiredService) -> ObservedService:
    props = {"Id": d.unit_name, "LoadState": "loaded", "ActiveState": "active", "SubState": "running",
             "MainPID": "4242", "UnitFileState": "enabled", "NeedDaemonReload": "no", "DropInPaths": "",
             "MemoryMax": "infinity", "MemoryHigh": "infinity", "CPUQuotaPerSecUSec": "infinity", "TasksMax": "4915"}
    for key, (_, value) in unit_limits(d.unit_text).items():
        if key == "CPUQuota":
            props["CPUQuotaPerSecUSec"] = _timespan(int(value)) if isinstance(value, int) else str(value)
        else:
            props[key] = str(value)
    # copies, as text read from a host would be (no shared string objects with the desired side)
    return ObservedService(
        d.service, current=d.version, releases=[d.version], binary_sha=d.sha256, want_binary_sha=d.sha256,
        config_text="".join(list(d.config_text)),
        unit_text="".join(list(d.unit_text)), env_hash=d.secrets_hash(SALT), props=props,
        cmdline=f"/usr/bin/python3 {d.binary_path} --config {d.config_path}", health=Health(200))


def record_for(d: DesiredService) -> ServiceRecord:
    return ServiceRecord(
        version=d.version, sha256=d.sha256, config_sha=d.config_sha, unit_sha=d.unit_sha,
        env_hash=d.secrets_hash(SALT), config_text=d.config_text, unit_text=d.unit_text,
        service_dir=d.service_dir, config_path=d.config_path, unit_name=d.unit_name, env_path=d.env_path,
        depends_on=list(d.depends_on), status="applied", applied_at="2025-01-01T00:00:00Z", serial=1)


def change_one(d: DesiredService, o: ObservedService, kind: str) -> DesiredService:
    """Make one service differ in one way (host drift or a spec move); returns the desired service to plan."""
    if kind == "config":
        o.config_text = o.config_text.replace("workers = 4", "workers = 16")
    elif kind == "config_added":
        o.config_text += "\n[debug]\nenabled = true\n"
    elif kind == "version":
        svc_dir = d.service_dir
        return dataclasses.replace(d, version="9.9.9", release_dir=f"{svc_dir}/releases/9.9.9",
                                   unit_text=d.unit_text.replace(f"/releases/{d.version}/", "/releases/9.9.9/"))
    elif kind == "unit":
        o.unit_text = o.unit_text.replace("MemoryMax=256M", "MemoryMax=512M")
        o.props["MemoryMax"] = str(512 * 1024**2)
    elif kind == "stopped":
        o.props.update(ActiveState="inactive", SubState="dead", MainPID="0")
        o.health = None
    elif kind == "live":
        o.props["MemoryMax"] = str(300 * 1024**2)
    elif kind == "secrets":
        o.env_hash = "0" * 64
    elif kind == "binary":
        o.binary_sha = "f" * 64
    elif kind == "health":
        o.health = Health(503)
    elif kind == "disabled":
        o.props["UnitFileState"] = "disabled"
    return d


def scenario(desired: dict[str, dict[str, DesiredService]], percent: int
             ) -> tuple[dict[str, dict[str, DesiredService]], dict[str, ObservedHost], State, int]:
    every = round(100 / percent) if percent else 0
    want: dict[str, dict[str, DesiredService]] = {}
    observed: dict[str, ObservedHost] = {}
    state = State(serial=1, lineage=SALT)
    changed = 0
    i = 0
    for host, svcs in desired.items():
        want[host] = {}
        services = {}
        for name, d in svcs.items():
            o = observed_for(d)
            if every and i % every == 0:
                d = change_one(d, o, KINDS[changed % len(KINDS)])
                changed += 1
            want[host][name] = d
            services[name] = o
            state.hosts.setdefault(host, {})[name] = record_for(svcs[name])
            i += 1
        observed[host] = ObservedHost(host, services, unit_files=[d.unit_name for d in svcs.values()],
                                      users={"provisioning"}, commands=1)
    return want, observed, state, changed


def clear_caches() -> None:
    for fn in (planmod.unit_limits, planmod._toml, planmod._unit, planmod._norm_unit_value, planmod._norm_live):
        fn.cache_clear()


def measure(desired: Any, observed: Any, state: State, runs: int, cold: bool) -> tuple[list[float], Any]:
    times = []
    plan = None
    for _ in range(runs):
        if cold:
            clear_caches()
        t = time.perf_counter()
        plan = make_plan(desired, observed, state, SALT)
        times.append((time.perf_counter() - t) * 1000)
    return times, plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)

    t = time.perf_counter()
    base = build_desired(args.services, args.hosts)
    build_s = time.perf_counter() - t
    first = next(iter(next(iter(base.values())).values()))
    keys = sum(len(t) for t in first.config.values())
    rows = []
    ok = True
    make_plan(*scenario(base, 10)[:3], SALT)      # warm up imports once (a CLI has them loaded already)
    for percent in (0, 10):
        desired, observed, state, changed = scenario(base, percent)
        cold, plan = measure(desired, observed, state, args.runs, cold=True)
        warm, _ = measure(desired, observed, state, args.runs, cold=False)
        med = statistics.median(cold)
        goal = GOALS_MS[percent]
        ok = ok and med < goal
        rows.append((percent, changed, len(plan.changes), med, min(cold), max(cold), statistics.median(warm), goal,
                     med < goal))
        if len(plan.changes) != changed:
            print(f"error: {changed} services changed but {len(plan.changes)} changes planned", file=sys.stderr)
            ok = False

    print(f"### make_plan: {args.services} services × {keys + 5} fields ({keys} config keys, version, artifact, "
          f"unit, secrets, state) on {args.hosts} hosts, "
          f"median of {args.runs} runs (inputs built in {build_s:.1f} s, Python {sys.version.split()[0]})\n")
    print("| changed | services changed | changes planned | median ms (cold) | min ms | max ms "
          "| median ms (warm caches) | goal | met |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for percent, changed, planned, med, lo, hi, warm_med, goal, met in rows:
        print(f"| {percent} % | {changed} | {planned} | {med:.1f} | {lo:.1f} | {hi:.1f} | {warm_med:.1f} "
              f"| < {goal:.0f} ms | {'yes' if met else 'NO'} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
