"""A converged `recon plan` with its state in PostgreSQL against the same plan with a state directory, in one
run, alternating (the machine is shared and its load varies).

    sudo .venv/bin/python bench/state_backend.py [--runs 15] [--hosts 1] [--keep] [--json FILE]

Boots N real test hosts (testhosts; TESTHOSTS_DIR/_NET/_PREFIX default /tmp/recon-statebench, 127.0.51,
rsbench) and a real PostgreSQL 15 server (tests/pgserver.py: initdb + pg_ctl on a loopback port, scram
password from PGPASSWORD), applies the platform (`specs/platform.yaml` + `specs/overrides/local.yaml`)
with each state, then times whole `recon plan --detailed-exitcode` processes (must exit 0: converged),
directory and PostgreSQL in turn, `--runs` times each. Prints medians (min) and the ratio pg / dir
(goal ≤ 1.1×).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TESTHOSTS_DIR", "/tmp/recon-statebench")
os.environ.setdefault("TESTHOSTS_NET", "127.0.51")
os.environ.setdefault("TESTHOSTS_PREFIX", "rsbench")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import yaml  # noqa: E402
from pgserver import PASSWORD, start_server  # noqa: E402

from testhosts import TestHost, TestHosts  # noqa: E402

SPECS = [str(REPO / "specs/platform.yaml"), str(REPO / "specs/overrides/local.yaml")]
TOKEN = "bench-vault-token"


def hosts_layer(pool: TestHosts, hosts: list[TestHost]) -> Path:
    names = [f"node{i}" for i in range(1, len(hosts) + 1)]
    doc = {"version": 1,
           "hosts": {n: {"address": h.address, "user": "root", "ssh_key": str(pool.key),
                         "known_hosts": str(pool.known_hosts)} for n, h in zip(names, hosts, strict=True)},
           "defaults": {"hosts": names, "rollout": {"batch_size": "100%", "max_failures": 0}},
           "services": {"vault-service": {"secrets": {"VAULT_TOKEN": {"from_file": None, "from_env": "VAULT_TOKEN"}}}}}
    path = Path(os.environ["TESTHOSTS_DIR"]) / "statebench-hosts.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=300)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--hosts", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="leave the hosts running (and skip booting if up)")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--settle", type=float, default=20, help="seconds to wait after the applies before timing")
    args = ap.parse_args(argv)
    pool = TestHosts()
    if not args.keep:
        pool.down()
    hosts = pool.up(range(1, args.hosts + 1))
    pg = start_server()
    env = {**os.environ, "VAULT_TOKEN": TOKEN, "NO_COLOR": "1", "PGPASSWORD": PASSWORD}
    layer = hosts_layer(pool, hosts)
    files = [x for f in [*SPECS, str(layer)] for x in ("-f", f)]
    states = {"dir": str(Path(os.environ["TESTHOSTS_DIR"]) / "statebench-state"),
              "pg": pg.url(pg.new_database())}
    base = [sys.executable, "-m", "reconciler"]
    try:
        for name, state in states.items():
            t = timed([*base, "apply", *files, "--state", state, "--auto-approve", "--no-color"], env)
            print(f"apply ({name}): {t:.1f} s", file=sys.stderr, flush=True)
        cases = {name: [*base, "plan", *files, "--state", state, "--no-color", "--detailed-exitcode"]
                 for name, state in states.items()}
        time.sleep(args.settle)
        load = os.getloadavg()[0]
        for a in cases.values():      # warm-up: page cache, sshd, the spec cache
            timed(a, env)
        times: dict[str, list[float]] = {k: [] for k in cases}
        for i in range(args.runs):
            order = list(cases) if i % 2 == 0 else list(reversed(cases))   # neither always goes first
            for k in order:
                times[k].append(timed(cases[k], env))
    finally:
        pg.stop()
        if not args.keep:
            pool.down()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["pg"] / med["dir"]
    print(f"\n{args.runs} runs each, alternating; {args.hosts} host(s); load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after\n")
    print("| converged plan, state in | median | min |")
    print("| --- | ---: | ---: |")
    for k, v in times.items():
        print(f"| {'a directory' if k == 'dir' else 'PostgreSQL'} | {med[k]:.3f} s | {min(v):.3f} s |")
    print(f"\nPostgreSQL / directory: {ratio:.2f}× (goal ≤ 1.1×)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"runs": args.runs, "hosts": args.hosts, "times": times,
                                                   "median": med, "ratio": ratio, "load": load}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
