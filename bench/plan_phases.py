"""Where the time of one `recon plan` goes: imports, spec and state, SSH connections, the
observation, the plan. One process, phases timed in order; run it against hosts that are up.

    .venv/bin/python bench/plan_phases.py -f specs/platform.yaml -f specs/overrides/local.yaml \\
        -f HOSTS.yaml --state DIR [--host NAME]... [--runs 3]

Each run is a fresh process (imports are part of the cost); prints the median of each phase.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def one_run(files: list[str], state: str, hosts: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    from reconciler import pipeline
    from reconciler.openssh import observe_session

    t1 = time.perf_counter()
    run = pipeline.prepare(files, state, hosts=hosts)
    t2 = time.perf_counter()
    session = observe_session(pipeline.hosts_in_scope(run))   # RECON_OBSERVE_VIA=pyinfra: the pyinfra one
    session.open()
    t3 = time.perf_counter()
    pipeline.observe(run, session)
    t4 = time.perf_counter()
    session.close()
    pipeline.plan(run)
    t5 = time.perf_counter()
    errors = [o.error for o in run.observed.values() if o.error]
    if errors:
        raise SystemExit(f"observation failed: {errors}")
    return {"imports": t1 - t0, "spec+state": t2 - t1, "connect": t3 - t2, "observe": t4 - t3,
            "close+plan": t5 - t4, "total": t5 - t0, "hosts": len(run.observed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-f", dest="files", action="append", required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--host", dest="hosts", action="append", default=[])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_run(args.files, args.state, args.hosts)))
        return
    argv = [sys.executable, __file__, "--child", "--state", args.state,
            *(x for f in args.files for x in ("-f", f)), *(x for h in args.hosts for x in ("--host", h))]
    runs = [json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
            for _ in range(args.runs)]
    print(f"hosts: {runs[0]['hosts']}, runs: {len(runs)} (median s)")
    for key in ("imports", "spec+state", "connect", "observe", "close+plan", "total"):
        print(f"  {key:<11} {statistics.median(r[key] for r in runs):.3f}")


if __name__ == "__main__":
    main()
