"""Where a fresh `recon apply` of the platform spends its time: per phase of each wave (upload, switch, start,
health wait; `ApplyResult.phases`), on 1 and N fresh test hosts.

    .venv/bin/python bench/apply_phases.py --hosts 1 --hosts 20 [--runs 1] [--json FILE]

Per host count and run: tear down and boot N fresh hosts, then one fresh apply of specs/platform.yaml +
specs/overrides/local.yaml (all hosts in one batch) in a subprocess that prints the apply's phase times. The
table gives, per phase, the time summed over the waves of one host (median over hosts, and the slowest host)
and its share of that host's apply; `wall` is the whole apply process. Hosts: TESTHOSTS_DIR/_NET/_PREFIX
(default /tmp/recon-bench, 127.0.30, rbench), torn down at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TESTHOSTS_DIR", "/tmp/recon-bench")
os.environ.setdefault("TESTHOSTS_NET", "127.0.30")
os.environ.setdefault("TESTHOSTS_PREFIX", "rbench")

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from common import hosts_layer  # noqa: E402

from testhosts import TestHosts  # noqa: E402

APPLY = """
import json, sys
from reconciler import runner
class UI:
    def show_plan(self, plan): pass
    def confirm(self): pass
    def on_event(self, event): pass
res = runner.run_apply(runner.ApplyRequest(files=tuple(sys.argv[2:]), auto_approve=True, state=sys.argv[1]), UI())
a = res.applied
created = sum(o.result == "created" for o in a.outcomes) if a else 0
print(json.dumps({"failed": a.failed if a else True, "created": created,
                  "phases": [[p.host, p.wave, str(p.phase), p.seconds] for p in (a.phases if a else [])]}))
"""
PHASES = ("upload", "switch", "start", "health")


def one_run(n: int) -> dict:
    hosts = TestHosts()
    hosts.down()
    up = hosts.up(list(range(1, n + 1)))
    layer = hosts_layer(hosts, up, Path(os.environ["TESTHOSTS_DIR"]) / f"recon-hosts-{n}.yaml")
    state = Path(os.environ["TESTHOSTS_DIR"]) / f"recon-state-{n}"
    shutil.rmtree(state, ignore_errors=True)
    env = {**os.environ, "VAULT_TOKEN": os.environ.get("BENCH_VAULT_TOKEN", "bench-vault-token")}
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", APPLY, str(state), str(REPO / "specs/platform.yaml"),
                          str(REPO / "specs/overrides/local.yaml"), str(layer)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"apply failed on {n} host(s):\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.splitlines()[-1])
    if out["failed"] or out["created"] != 9 * n:
        raise SystemExit(f"the fresh apply on {n} host(s) did not create every service: {out}")
    per_host: dict[str, dict[str, float]] = {}
    for host, _wave, phase, secs in out["phases"]:
        per_host.setdefault(host, dict.fromkeys(PHASES, 0.0))[phase] += secs
    return {"hosts": n, "wall_s": wall, "loadavg_before": round(load, 1), "per_host": per_host}


def table(runs: list[dict]) -> str:
    rows = ["| hosts | phase | median host (s) | slowest host (s) | share of the host's apply |",
            "| ---: | --- | ---: | ---: | ---: |"]
    for r in runs:
        totals = {h: sum(p.values()) for h, p in r["per_host"].items()}
        for phase in PHASES:
            vals = [p[phase] for p in r["per_host"].values()]
            share = statistics.median(p[phase] / totals[h] for h, p in r["per_host"].items() if totals[h])
            rows.append(f"| {r['hosts']} | {phase} | {statistics.median(vals):.2f} | {max(vals):.2f} | "
                        f"{share:.0%} |")
        rows.append(f"| {r['hosts']} | **wall (whole process)** | {r['wall_s']:.2f} | | load {r['loadavg_before']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, action="append", help="host count (repeatable; default 1)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    runs = []
    try:
        for _ in range(args.runs):
            for n in args.hosts or [1]:
                runs.append(one_run(n))
                print(table(runs[-1:]), flush=True)
    finally:
        if not args.keep:
            TestHosts().down()
    print("\n" + table(runs))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
