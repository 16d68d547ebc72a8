"""A converged `recon plan` against its floor, one SSH login: `ssh HOST true` (OpenSSH, the same key
and known_hosts, strict host keys), on a 1-host and a 20-host setup of the platform spec, in one run.

    sudo .venv/bin/python bench/plan_floor.py [--runs 7] [--large 20] [--keep] [--json FILE]

Boots 1 + N real test hosts (testhosts; TESTHOSTS_DIR/_NET/_PREFIX default /tmp/recon-floor, 127.0.37,
rfloor), applies the platform (`specs/platform.yaml` + `specs/overrides/local.yaml`) to the 1-host and
the N-host setup, then times whole processes, interleaved round-robin, each `--runs` times:

  ssh true          ssh -i KEY -o StrictHostKeyChecking=yes -o UserKnownHostsFile=KNOWN HOST true
  plan 1 / plan N   recon plan --detailed-exitcode (must exit 0: converged), observing through OpenSSH
  ... (pyinfra)     the same with RECON_OBSERVE_VIA=pyinfra: the observation through pyinfra's connector,
                    as before this path existed

Prints medians (min) and the ratios: plan 1 / ssh true (goal ≤ 2×), plan N / plan 1 (goal ≤ 2×), and
per command the CPU it cost: on the controller (the process and its children: Python, the `ssh`
clients) and on the test hosts (their cgroups' cpuacct.usage: sshd logins, the observation script, the
services answering health checks, less the hosts' idle rate measured by an interleaved `sleep`).
recon's modules are byte-compiled first (`compileall`), as an installed package is: with
PYTHONDONTWRITEBYTECODE set, every run would otherwise compile ~90 modules again (~50 ms of CPU).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TESTHOSTS_DIR", "/tmp/recon-floor")
os.environ.setdefault("TESTHOSTS_NET", "127.0.37")
os.environ.setdefault("TESTHOSTS_PREFIX", "rfloor")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from testhosts import TestHost, TestHosts  # noqa: E402

SPECS = [str(REPO / "specs/platform.yaml"), str(REPO / "specs/overrides/local.yaml")]
TOKEN = "bench-vault-token"


def hosts_layer(pool: TestHosts, hosts: list[TestHost], tag: str) -> Path:
    names = [f"node{i}" for i in range(1, len(hosts) + 1)]
    doc = {"version": 1,
           "hosts": {n: {"address": h.address, "user": "root", "ssh_key": str(pool.key),
                         "known_hosts": str(pool.known_hosts)} for n, h in zip(names, hosts, strict=True)},
           "defaults": {"hosts": names, "rollout": {"batch_size": "100%", "max_failures": 0}},
           "services": {"vault-service": {"secrets": {"VAULT_TOKEN": {"from_file": None, "from_env": "VAULT_TOKEN"}}}}}
    path = Path(os.environ["TESTHOSTS_DIR"]) / f"floor-hosts-{tag}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def recon_argv(command: str, layer: Path, tag: str) -> list[str]:
    state = Path(os.environ["TESTHOSTS_DIR"]) / f"floor-state-{tag}"
    return [sys.executable, "-m", "reconciler", command, *(x for f in [*SPECS, str(layer)] for x in ("-f", f)),
            "--state", str(state), "--no-color"]


def host_cpu(pool: TestHosts, hosts: list[TestHost]) -> float:
    """CPU seconds the test hosts' cgroups have used so far (cpuacct.usage, all their processes)."""
    total = 0
    for h in hosts:
        for d in pool._cgdirs(h.index):
            if d.parts[:4] == ("/", "sys", "fs", "cgroup") and "cpuacct" in d.parts[4].split(","):
                with contextlib.suppress(OSError, ValueError):
                    total += int((d / "cpuacct.usage").read_text())
    return total / 1e9


CPU: dict[str, list[tuple[float, float]]] = {}   # case -> (controller CPU s, host CPU s) per run


def timed(argv: list[str], env: dict[str, str], case: str = "", cpu: Any = None) -> float:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    h0 = cpu() if cpu else 0.0
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=300)
    elapsed = time.perf_counter() - t0
    h1 = cpu() if cpu else 0.0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    if case:
        CPU.setdefault(case, []).append((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, h1 - h0))
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--large", type=int, default=20, help="hosts of the large setup (default 20)")
    ap.add_argument("--keep", action="store_true", help="leave the hosts running (and skip booting if up)")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--via", default="openssh,pyinfra", help="observation paths to time (default openssh,pyinfra)")
    ap.add_argument("--settle", type=float, default=45,
                    help="seconds to wait after the applies before timing (the hosts' start-up settles)")
    args = ap.parse_args(argv)
    pool = TestHosts()
    if not args.keep:
        pool.down()
    up = pool.up(range(1, args.large + 2))
    small, large = up[-1:], up[:-1]
    env = {**os.environ, "VAULT_TOKEN": TOKEN, "NO_COLOR": "1"}
    setups = {"1": hosts_layer(pool, small, "1"), str(args.large): hosts_layer(pool, large, str(args.large))}
    try:
        for tag, layer in setups.items():
            t = timed([*recon_argv("apply", layer, tag), "--auto-approve"], env)
            print(f"apply {tag} host(s): {t:.1f} s", file=sys.stderr, flush=True)
        h = small[0]
        load = 0.0
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "ssh true": (["ssh", "-i", str(pool.key), "-o", "StrictHostKeyChecking=yes", "-o",
                          f"UserKnownHostsFile={pool.known_hosts}", "-o", "BatchMode=yes", f"root@{h.address}",
                          "true"], env),
        }
        for via in args.via.split(","):
            for tag, layer in setups.items():
                e = {**env, "RECON_OBSERVE_VIA": via}
                cases[f"plan {tag} ({via})"] = ([*recon_argv("plan", layer, tag), "--detailed-exitcode"], e)
        cases["idle (sleep 0.3)"] = (["sleep", "0.3"], env)
        compileall.compile_dir(str(REPO / "reconciler"), quiet=1)
        time.sleep(args.settle)
        load = os.getloadavg()[0]
        for a, e in cases.values():   # warm-up: page cache, sshd, the spec cache, the recorded logins
            timed(a, e)
        times: dict[str, list[float]] = {k: [] for k in cases}
        cpu = lambda: host_cpu(pool, up)   # noqa: E731
        for _ in range(args.runs):
            for k, (a, e) in cases.items():
                times[k].append(timed(a, e, k, cpu))
    finally:
        if not args.keep:
            pool.down()
    med = {k: statistics.median(v) for k, v in times.items()}
    n = str(args.large)
    print(f"\n{args.runs} runs each, interleaved; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    idle_key = "idle (sleep 0.3)"
    idle_rate = statistics.median(c[1] / t for c, t in zip(CPU[idle_key], times[idle_key], strict=True))
    ctl = {k: statistics.median(c[0] for c in v) for k, v in CPU.items()}
    hcpu = {k: statistics.median(c[1] - idle_rate * t for c, t in zip(v, times[k], strict=True))
            for k, v in CPU.items()}
    print(f"hosts' idle CPU: {idle_rate:.3f} CPU-s per second (subtracted below)\n")
    print("| command | median | min | controller CPU | test hosts' CPU |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k, v in times.items():
        if k != idle_key:
            print(f"| {k} | {med[k]:.3f} s | {min(v):.3f} s | {ctl[k]:.3f} s | {hcpu[k]:.3f} s |")
    vias = args.via.split(",")
    print("\n| ratio | " + " | ".join(f"{v} path" for v in vias) + " | goal |")
    print("| --- | " + "---: | " * len(vias) + "--- |")
    for via_label, num, den, goal in (("plan 1 / ssh true", "plan 1 ({})", "ssh true", "≤ 2×"),
                                      (f"plan {n} / plan 1", f"plan {n} ({{}})", "plan 1 ({})", "≤ 2×")):
        cells = [med[num.format(v)] / med[den.format(v)] for v in vias]
        print(f"| {via_label} | " + " | ".join(f"{c:.2f}×" for c in cells) + f" | {goal} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"runs": times, "median": med, "controller_cpu": ctl,
                                                   "host_cpu": hcpu, "idle_rate": idle_rate}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
