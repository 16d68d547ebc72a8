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
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    SPECS,
    TOKEN,
    arg_parser,
    booted,
    hosts_layer,
    load,
    medians,
    recon_argv,
    runs_header,
    testhosts_env,
    timed,
    times_table,
    write_json,
)

testhosts_env("/tmp/recon-statebench", "127.0.51", "rsbench")
sys.path.insert(0, str(REPO / "tests"))

from pgserver import PASSWORD, start_server  # noqa: E402

from testhosts import TestHost, TestHosts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, runs=15, settle=20)
    ap.add_argument("--hosts", type=int, default=1)
    args = ap.parse_args(argv)
    pool = TestHosts()
    with booted(pool, range(1, args.hosts + 1), args.keep) as hosts:
        return bench(args, pool, hosts)


def bench(args: argparse.Namespace, pool: TestHosts, hosts: list[TestHost]) -> int:
    pg = start_server()
    env = {**os.environ, "VAULT_TOKEN": TOKEN, "NO_COLOR": "1", "PGPASSWORD": PASSWORD}
    files = [*SPECS, hosts_layer(pool, hosts, Path(os.environ["TESTHOSTS_DIR"]) / "statebench-hosts.yaml")]
    states = {"dir": str(Path(os.environ["TESTHOSTS_DIR"]) / "statebench-state"),
              "pg": pg.url(pg.new_database())}
    try:
        for name, state in states.items():
            t = timed(recon_argv("apply", files, state, "--auto-approve"), env)
            print(f"apply ({name}): {t:.1f} s", file=sys.stderr, flush=True)
        cases = {name: recon_argv("plan", files, state, "--detailed-exitcode") for name, state in states.items()}
        time.sleep(args.settle)
        load_before = load()
        for a in cases.values():      # warm-up: page cache, sshd, the spec cache
            timed(a, env)
        times: dict[str, list[float]] = {k: [] for k in cases}
        for i in range(args.runs):
            order = list(cases) if i % 2 == 0 else list(reversed(cases))   # neither always goes first
            for k in order:
                times[k].append(timed(cases[k], env))
    finally:
        pg.stop()
    med = medians(times)
    ratio = med["pg"] / med["dir"]
    print(runs_header(args.runs, load_before, f"alternating; {args.hosts} host(s)"))
    print(times_table({"a directory" if k == "dir" else "PostgreSQL": v for k, v in times.items()},
                      "converged plan, state in"))
    print(f"\nPostgreSQL / directory: {ratio:.2f}× (goal ≤ 1.1×)")
    write_json(args.json_out, {"runs": args.runs, "hosts": args.hosts, "times": times, "median": med,
                               "ratio": ratio, "load": load_before})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
