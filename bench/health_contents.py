"""What `health.expect_json` and `external:` cost a converged `recon plan` / `recon status` of the platform on
one host, against what an operator would otherwise run: `ssh HOST` curling every service's /health.

    sudo .venv/bin/python bench/health_contents.py [--runs 7] [--keep] [--json FILE]

Boots 1 real test host (testhosts; TESTHOSTS_DIR/_NET/_PREFIX default /tmp/recon-health, 127.0.38, rhealth),
applies the platform (`specs/platform.yaml` + `specs/overrides/local.yaml`), then times whole processes,
interleaved round-robin, each `--runs` times:

  ssh curl ×9            ssh HOST 'for each service: curl -s http://ADDR:PORT/health' (the bodies, by hand)
  plan / status          converged, health codes only
  plan / status +json    with a layer `defaults.health.expect_json: {database: connected}` (bodies read back)
  status +external       with an `external:` entry (unit systemd-journald, the orchestrator's /health)

Then times the observation alone in this process (`pipeline.observe`, the round trip over a login started
beforehand, as `recon status` does), plain / +json / +external, interleaved, 3 × `--runs` times each.

Prints medians (min) and the ratios against `ssh curl ×9` and against the same command without the keys.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import (
    SPECS,
    TOKEN,
    arg_parser,
    booted,
    hosts_layer,
    medians,
    runs_header,
    ssh_argv,
    testhosts_env,
    timed,
    write_json,
)

testhosts_env("/tmp/recon-health", "127.0.38", "rhealth")

import yaml  # noqa: E402

from reconciler.spec import load_spec  # noqa: E402
from testhosts import TestHost, TestHosts  # noqa: E402


def layer(name: str, doc: dict) -> Path:
    path = Path(os.environ["TESTHOSTS_DIR"]) / f"health-{name}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, **doc}, sort_keys=False))
    return path


def recon_argv(command: str, layers: list[Path]) -> list[str]:
    return common.recon_argv(command, [*SPECS, *layers], Path(os.environ["TESTHOSTS_DIR"]) / "health-state")


def observe_times(hosts: Path, expect: Path, ext: Path, n: int) -> dict[str, list[float]]:
    from reconciler import pipeline

    state = str(Path(os.environ["TESTHOSTS_DIR"]) / "health-state")
    cases = {"plain": ([hosts], False), "+json": ([hosts, expect], False), "+external": ([hosts, ext], True)}
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(n):
        for k, (layers, externals) in cases.items():
            run = pipeline.prepare([*SPECS, *map(str, layers)], state, secrets=False, connect_early=True)
            t0 = time.perf_counter()
            pipeline.observe(run, externals=externals)
            out[k].append(time.perf_counter() - t0)
            assert all(o.ok for o in run.observed.values()), run.observed
    return out


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, runs=7, settle=20, keep="leave the host running (and skip booting if up)",
                    settle_help="seconds to wait after the apply before timing")
    args = ap.parse_args(argv)
    pool = TestHosts()
    with booted(pool, [1], args.keep) as (h,):
        return bench(args, pool, h)


def bench(args: argparse.Namespace, pool: TestHosts, h: TestHost) -> int:
    env = {**os.environ, "VAULT_TOKEN": TOKEN, "NO_COLOR": "1"}
    hosts = hosts_layer(pool, [h], Path(os.environ["TESTHOSTS_DIR"]) / "health-hosts.yaml", batch_all=False)
    expect = layer("json", {"defaults": {"health": {"expect_json": {"database": "connected"}}}})
    spec = load_spec([*SPECS, str(hosts)], check_artifacts=False)
    ext = layer("external", {"external": {"journal": {"hosts": ["node1"], "unit": "systemd-journald.service",
                                                     "health": {"http": f"http://{h.address}:"
                                                                f"{spec.services['orchestrator'].port}/health",
                                                                "expect_json": {"database": "connected"}}}}})
    ports = [s.port for s in spec.services.values() if s.port]
    curls = "; ".join(f"curl -s -m 3 http://{h.address}:{p}/health" for p in ports)
    print(f"apply: {timed([*recon_argv('apply', [hosts]), '--auto-approve'], env):.1f} s", file=sys.stderr)
    cases: dict[str, list[str]] = {
        f"ssh curl ×{len(ports)}": ssh_argv(pool, h, curls),
        "plan": [*recon_argv("plan", [hosts]), "--detailed-exitcode"],
        "plan +json": [*recon_argv("plan", [hosts, expect]), "--detailed-exitcode"],
        "status": recon_argv("status", [hosts]),
        "status +json": recon_argv("status", [hosts, expect]),
        "status +external": recon_argv("status", [hosts, ext]),
    }
    time.sleep(args.settle)
    load = common.load()
    for a in cases.values():   # warm-up
        timed(a, env)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.runs):
        for k, a in cases.items():
            times[k].append(timed(a, env))
    observe = observe_times(hosts, expect, ext, 3 * args.runs)
    med = medians(times)
    ref = f"ssh curl ×{len(ports)}"
    print(runs_header(args.runs, load))
    print(f"| command | median | min | / {ref} | / without |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k, v in times.items():
        base = k.split(" +")[0]
        without = f"{med[k] / med[base]:.2f}×" if base != k else ""
        print(f"| {k} | {med[k]:.3f} s | {min(v):.3f} s | {med[k] / med[ref]:.2f}× | {without} |")
    print("\n| observation only (in process) | median | min | / plain |")
    print("| --- | ---: | ---: | ---: |")
    for k, v in observe.items():
        print(f"| {k} | {statistics.median(v) * 1000:.0f} ms | {min(v) * 1000:.0f} ms | "
              f"{statistics.median(v) / statistics.median(observe['plain']):.2f}× |")
    write_json(args.json_out, {"runs": times, "median": med, "observe": observe})
    return 0


if __name__ == "__main__":
    sys.exit(main())
