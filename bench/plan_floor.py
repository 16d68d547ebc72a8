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
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import REPO, SPECS, TOKEN, arg_parser, booted, ssh_argv, testhosts_env, write_json

testhosts_env("/tmp/recon-floor", "127.0.37", "rfloor")

from testhosts import TestHost, TestHosts  # noqa: E402


def hosts_layer(pool: TestHosts, hosts: list[TestHost], tag: str) -> Path:
    return common.hosts_layer(pool, hosts, Path(os.environ["TESTHOSTS_DIR"]) / f"floor-hosts-{tag}.yaml")


def recon_argv(command: str, layer: Path, tag: str) -> list[str]:
    return common.recon_argv(command, [*SPECS, layer], Path(os.environ["TESTHOSTS_DIR"]) / f"floor-state-{tag}")


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
    """common.timed, and with `case` the controller's and (`cpu()`) the test hosts' CPU seconds into CPU[case]."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    h0 = cpu() if cpu else 0.0
    elapsed = common.timed(argv, env, timeout=300)
    h1 = cpu() if cpu else 0.0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if case:
        CPU.setdefault(case, []).append((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, h1 - h0))
    return elapsed


def one_and_n_parser(doc: str, runs: int, settle: float) -> argparse.ArgumentParser:
    """The options of a bench on a 1-host and an N-host setup (this one and day2.py): arg_parser and --large."""
    ap = arg_parser(doc, runs, settle, settle_help="seconds to wait after the applies before timing (the hosts' "
                    "start-up settles)")
    ap.add_argument("--large", type=int, default=20, help="hosts of the large setup (default 20)")
    return ap


def apply_setups(pool: TestHosts, up: list[TestHost], env: dict[str, str]) -> dict[str, Path]:
    """The platform applied to the last of `up` alone (setup "1") and to the others together (setup "N"): each
    setup's hosts layer."""
    small, large = up[-1:], up[:-1]
    n = str(len(large))
    setups = {"1": hosts_layer(pool, small, "1"), n: hosts_layer(pool, large, n)}
    for tag, layer in setups.items():
        t = timed([*recon_argv("apply", layer, tag), "--auto-approve"], env)
        print(f"apply {tag} host(s): {t:.1f} s", file=sys.stderr, flush=True)
    return setups


def main(argv: list[str] | None = None) -> int:
    ap = one_and_n_parser(__doc__, runs=7, settle=45)
    ap.add_argument("--via", default="openssh,pyinfra", help="observation paths to time (default openssh,pyinfra)")
    args = ap.parse_args(argv)
    pool = TestHosts()
    with booted(pool, range(1, args.large + 2), args.keep) as up:
        return bench(args, pool, up)


def bench(args: argparse.Namespace, pool: TestHosts, up: list[TestHost]) -> int:
    env = {**os.environ, "VAULT_TOKEN": TOKEN, "NO_COLOR": "1"}
    setups = apply_setups(pool, up, env)
    h = up[-1]
    cases: dict[str, tuple[list[str], dict[str, str]]] = {
        "ssh true": (ssh_argv(pool, h, "true"), env),
    }
    for via in args.via.split(","):
        for tag, layer in setups.items():
            e = {**env, "RECON_OBSERVE_VIA": via}
            cases[f"plan {tag} ({via})"] = ([*recon_argv("plan", layer, tag), "--detailed-exitcode"], e)
    cases["idle (sleep 0.3)"] = (["sleep", "0.3"], env)
    compileall.compile_dir(str(REPO / "reconciler"), quiet=1)
    time.sleep(args.settle)
    load = common.load()
    for a, e in cases.values():   # warm-up: page cache, sshd, the spec cache, the recorded logins
        timed(a, e)
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu = lambda: host_cpu(pool, up)   # noqa: E731
    for _ in range(args.runs):
        for k, (a, e) in cases.items():
            times[k].append(timed(a, e, k, cpu))
    med = common.medians(times)
    n = str(args.large)
    print(common.runs_header(args.runs, load))
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
    write_json(args.json_out, {"runs": times, "median": med, "controller_cpu": ctl, "host_cpu": hcpu,
                               "idle_rate": idle_rate})
    return 0


if __name__ == "__main__":
    sys.exit(main())
