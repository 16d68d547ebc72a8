"""Day-2 speed, in one run: a `recon watch` tick on N hosts against a converged `recon plan` on the same N
hosts, the first tick against the next ones (connections reused), and `recon logs -n 50` of one service on
one host against `ssh HOST journalctl -u UNIT -n 50` (the same key and known_hosts, strict host keys).

    sudo .venv/bin/python bench/day2.py [--runs 5] [--large 20] [--keep] [--json FILE]

Boots 1 + N real test hosts (testhosts; TESTHOSTS_DIR/_NET/_PREFIX default /tmp/recon-day2, 127.0.39,
rday2), applies the platform (`specs/platform.yaml` + `specs/overrides/local.yaml`) to the 1-host and the
N-host setup, then times, interleaved round-robin, each `--runs` times:

  plan N            recon plan --detailed-exitcode on N hosts (must exit 0: converged), the whole process
  watch N           recon watch --count 3 --interval 0.05 --format json on N hosts; per process: the
                    time from its start to the first tick, and each tick's own `seconds` (tick 1 includes
                    connecting to every host; ticks 2 and 3 reuse the connections)
  ssh journalctl    ssh -i KEY -o StrictHostKeyChecking=yes -o UserKnownHostsFile=KNOWN HOST
                    journalctl -u provisioning-orchestrator.service -n 50
  logs 1            recon logs orchestrator -n 50 on the 1-host setup, the whole process

Prints medians (min) and the ratios: watch tick / plan N (goal ≤ 1), tick 2 / tick 1 (goal < 1),
logs / ssh journalctl (goal ≤ 2×).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    TOKEN,
    booted,
    load,
    medians,
    runs_header,
    ssh_argv,
    testhosts_env,
    times_table,
    write_json,
)

testhosts_env("/tmp/recon-day2", "127.0.39", "rday2")

from plan_floor import apply_setups, one_and_n_parser, recon_argv, timed  # noqa: E402

from testhosts import TestHost, TestHosts  # noqa: E402


def watch_once(argv: list[str], env: dict[str, str]) -> tuple[float, list[float]]:
    """(seconds from the process start to its first tick line, each tick's own `seconds`)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    assert p.stdout is not None
    first = 0.0
    ticks: list[dict[str, object]] = []
    for line in p.stdout:
        if not ticks:
            first = time.perf_counter() - t0
        ticks.append(json.loads(line))
    err = p.stderr.read() if p.stderr else ""
    if p.wait(timeout=300) != 0 or len(ticks) != 3:
        raise SystemExit(f"{' '.join(argv)} exited {p.returncode} after {len(ticks)} ticks:\n{err[-2000:]}")
    for t in ticks:
        if t["errors"] or not all(r["healthy"] for r in t["services"]):  # type: ignore[union-attr]
            raise SystemExit(f"watch saw a problem: {t['errors']}")
    return first, [float(t["seconds"]) for t in ticks]  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    ap = one_and_n_parser(__doc__, runs=5, settle=30)
    args = ap.parse_args(argv)
    pool = TestHosts()
    with booted(pool, range(1, args.large + 2), args.keep) as up:
        return bench(args, pool, up)


def bench(args: argparse.Namespace, pool: TestHosts, up: list[TestHost]) -> int:
    env = {**os.environ, "VAULT_TOKEN": TOKEN, "NO_COLOR": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)   # as a user runs it: recon's modules load from their .pyc
    n = str(args.large)
    setups = apply_setups(pool, up, env)
    h = up[-1]
    ssh_journal = ssh_argv(pool, h, "journalctl", "-u", "provisioning-orchestrator.service", "-n", "50")
    plan_n = [*recon_argv("plan", setups[n], n), "--detailed-exitcode"]
    watch_n = [*recon_argv("watch", setups[n], n), "--count", "3", "--interval", "0.05", "--format", "json"]
    logs_1 = [*recon_argv("logs", setups["1"], "1"), "orchestrator", "-n", "50"]
    times: dict[str, list[float]] = {k: [] for k in ("plan " + n, "watch start → tick 1", "watch tick 1",
                                                     "watch tick 2", "watch tick 3", "ssh journalctl", "logs 1")}
    # at least 50 journal lines of the orchestrator on the 1-host setup (each SIGHUP logs a reload)
    subprocess.run(ssh_argv(pool, h, "for i in $(seq 30); do systemctl kill -s HUP "
                            "provisioning-orchestrator.service; sleep 0.1; done"), check=True, capture_output=True)
    time.sleep(args.settle)
    load_before = load()
    timed(plan_n, env)           # warm-up: page cache, sshd, the spec cache
    watch_once(watch_n, env)
    lines = subprocess.run(ssh_journal, capture_output=True, text=True, check=True).stdout.count("\n")
    print(f"ssh journalctl prints {lines} lines", file=sys.stderr, flush=True)
    timed(logs_1, env)
    for _ in range(args.runs):
        times["plan " + n].append(timed(plan_n, env))
        first, ticks = watch_once(watch_n, env)
        times["watch start → tick 1"].append(first)
        for i, s in enumerate(ticks, 1):
            times[f"watch tick {i}"].append(s)
        times["ssh journalctl"].append(timed(ssh_journal, env))
        times["logs 1"].append(timed(logs_1, env))
    med = medians(times)
    print(runs_header(args.runs, load_before))
    print(times_table(times, "measured"))
    later = statistics.median(times["watch tick 2"] + times["watch tick 3"])
    low = {k: min(v) for k, v in times.items()}
    low_later = min(times["watch tick 2"] + times["watch tick 3"])
    print("\n| ratio | of medians | of minimums | goal |")
    print("| --- | ---: | ---: | --- |")
    for label, value, best, goal in (
            (f"watch tick 2–3 / plan {n}", later / med["plan " + n], low_later / low["plan " + n], "≤ 1"),
            (f"watch tick 1 (with connecting) / plan {n}", med["watch tick 1"] / med["plan " + n],
             low["watch tick 1"] / low["plan " + n], "≤ 1"),
            ("watch tick 2–3 / tick 1", later / med["watch tick 1"], low_later / low["watch tick 1"], "< 1"),
            ("logs 1 / ssh journalctl", med["logs 1"] / med["ssh journalctl"], low["logs 1"] / low["ssh journalctl"],
             "≤ 2×")):
        print(f"| {label} | {value:.2f}× | {best:.2f}× | {goal} |")
    write_json(args.json_out, {"runs": times, "median": med})
    return 0


if __name__ == "__main__":
    sys.exit(main())
