"""Where the time of one `recon plan` goes, on its real path (the recorded logins started first, the
spec checked while they log in, the plan imported while the hosts answer). Run it against hosts that
are up and converged.

    .venv/bin/python bench/plan_phases.py -f specs/platform.yaml -f specs/overrides/local.yaml \\
        -f HOSTS.yaml --state DIR [--host NAME]... [--runs 5]

Each run is a fresh process running `recon plan` as `python -m reconciler` does, with timers wrapped
around its stages from outside (no timer in recon's code). Marks, in ms from the parent's spawn
(CLOCK_MONOTONIC is one clock for all processes):

  python       the interpreter is up (the child's first line: Python's start and `site`)
  ssh spawned  the first `ssh` starts (from `reconciler.prelogin` when the logins are recorded, else
               from `pipeline.prepare` once the spec is checked)
  cli          click and recon's CLI imported (the entry point starts the recorded logins first)
  spec         `pipeline.prepare` done: spec loaded and checked, desired state, recon's state
  answered     the last host answered (`observe_hosts` returns; its `parse` time is shown apart)
  planned      `pipeline.plan` done
  rendered     the plan printed
  exit         the process is gone (the parent's wait)

Interleaved with each run, `ssh HOST true` for the first host (same key and known_hosts) gives the
login alone: answered - ssh spawned - login is the observation script's own time and its output.
Prints the median of each mark and of each span, and the CPU of the process and its children.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import time
T = {"python": time.monotonic()}
import json, os, sys
def mark(k):
    T.setdefault(k, time.monotonic())
from reconciler import prelogin
spawn = prelogin.spawn
def spawn_marked(*a, **k):
    mark("ssh spawned")
    return spawn(*a, **k)
prelogin.spawn = spawn_marked
start = prelogin.start
PARSE = [0.0]
def start_then_wrap(args):
    start(args)
    from reconciler import cli, observe, pipeline
    mark("cli")
    prepare, plan = pipeline.prepare, pipeline.plan
    def prepare_marked(*a, **k):
        r = prepare(*a, **k); mark("spec"); return r
    def plan_marked(*a, **k):
        r = plan(*a, **k); mark("planned"); return r
    pipeline.prepare, pipeline.plan = prepare_marked, plan_marked
    observe_hosts, parse_output = observe.observe_hosts, observe.parse_output
    def observe_marked(*a, **k):
        r = observe_hosts(*a, **k); mark("answered"); return r
    def parse_timed(*a, **k):
        t = time.monotonic(); r = parse_output(*a, **k); PARSE[0] += time.monotonic() - t; return r
    observe.observe_hosts, observe.parse_output = observe_marked, parse_timed
    emit = cli.emit_plan
    def emit_marked(*a, **k):
        r = emit(*a, **k); sys.stdout.flush(); mark("rendered"); return r
    cli.emit_plan = emit_marked
prelogin.start = start_then_wrap
def report():
    T["parse"] = PARSE[0]
    os.write(2, ("\nPHASES=" + json.dumps(T) + "\n").encode())
_exit = os._exit
def exit_marked(code):
    report(); _exit(code)
os._exit = exit_marked
sys.argv[0] = "recon"
try:
    prelogin.main()   # as `python -m reconciler`: start the recorded logins, run the CLI, exit at once
except SystemExit as exc:
    code = exc.code
    if not (code is None or isinstance(code, int)):
        raise
    report()
    sys.exit(code)
"""

MARKS = ("python", "ssh spawned", "cli", "spec", "answered", "planned", "rendered", "exit")


def one_run(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    res = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    end = time.monotonic()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode not in (0, 2):
        raise SystemExit(f"recon plan exited {res.returncode}:\n{res.stdout[-1500:]}\n{res.stderr[-1500:]}")
    line = [x for x in res.stderr.splitlines() if x.startswith("PHASES=")][-1]
    marks = json.loads(line[len("PHASES="):])
    out = {k: (v - t0) * 1000 for k, v in marks.items() if k != "parse"}
    out["exit"] = (end - t0) * 1000
    out["parse"] = marks["parse"] * 1000
    out["cpu"] = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-f", dest="files", action="append", required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--host", dest="hosts", action="append", default=[])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from reconciler.prelogin import ssh_argv
    from reconciler.spec import load_spec

    spec = load_spec(args.files)
    first = spec.hosts[args.hosts[0] if args.hosts else sorted(spec.hosts)[0]]
    ssh_true = [*ssh_argv(first), "true"]
    env = {**os.environ, "NO_COLOR": "1"}
    argv = [sys.executable, "-c", CHILD, "plan", *(x for f in args.files for x in ("-f", f)), "--state", args.state,
            "--no-color", *(x for h in args.hosts for x in ("--host", h))]
    one_run(argv, env)   # warm-up: page cache, and the logins recorded for this command line
    runs, logins = [], []
    for _ in range(args.runs):
        runs.append(one_run(argv, env))
        t0 = time.monotonic()
        subprocess.run(ssh_true, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        logins.append((time.monotonic() - t0) * 1000)
    med = {k: statistics.median(r[k] for r in runs) for k in (*MARKS, "parse", "cpu") if all(k in r for r in runs)}
    login = statistics.median(logins)
    print(f"{len(spec.hosts) if not args.hosts else len(args.hosts)} host(s) in the spec, {len(runs)} runs "
          f"(median ms), load {os.getloadavg()[0]:.1f}")
    for k in MARKS:
        if k in med:
            print(f"  {k:<12} {med[k]:7.1f}")
    spans = {
        "python start (to the child's first line)": med["python"],
        "ssh spawned at": med["ssh spawned"],
        "login alone (ssh true), so logged in at": med["ssh spawned"] + login,
        "imports (python to cli)": med["cli"] - med["python"],
        "spec, desired state, state (cli to spec)": med["spec"] - med["cli"],
        "waiting on the hosts (spec to answered)": med["answered"] - med["spec"],
        "  of which parsing the answers": med["parse"],
        "plan": med["planned"] - med["answered"],
        "render": med["rendered"] - med["planned"],
        "exit": med["exit"] - med["rendered"],
        "total": med["exit"],
        "CPU, process and children": med["cpu"],
    }
    print("spans:")
    for k, v in spans.items():
        print(f"  {k:<42} {v:7.1f}")
    Path(os.environ.get("PLAN_PHASES_JSON", "/dev/null")).write_text(json.dumps({"runs": runs, "login": logins}))


if __name__ == "__main__":
    main()
