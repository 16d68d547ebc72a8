"""Fresh apply of a 3-service chain: `recon apply` against a plain pyinfra deploy (issue 9), fresh hosts.

recon's three health-gated waves against pyinfra putting the same files with TCP_NODELAY and no health checks,
on fresh real test hosts, interleaved in one run.

    bench/setup.sh                                              # bench/.venv with pyinfra (once)
    .venv/bin/python -m reconciler.standin.build --out artifacts  # the stand-in artifacts (once)
    sudo .venv/bin/python bench/chain.py [--runs 3] [--warmup 1] [--settle 3] [--json FILE]

The chain is the head of the platform's dependency chain with its stand-in artifacts (`artifacts/`, as
specs/platform.yaml uses them): orchestrator → vault-service → control-center, one `depends_on` each, so three
waves; every service has an HTTP health check (`http://{address}:{port}/health`), type notify, and
vault-service a secret (an EnvironmentFile). The script writes the spec, a hosts layer per host and the
pyinfra manifest into TESTHOSTS_DIR (testhosts; TESTHOSTS_DIR/_NET/_PREFIX default /tmp/recon-chain, 127.0.44,
rchain). Each round boots two fresh hosts (every host halted first), waits for their boot to finish
(`systemctl is-system-running --wait`, then --settle seconds), then times whole processes, in this order:

  recon apply        `recon apply --auto-approve` of the chain on host 1, a fresh state directory: per wave
                     upload, switch, start, health gate
  pyinfra+nodelay    `bench/.venv/bin/pyinfra -y` of bench/equivalent/deploy.py on host 2 with the chain's
                     manifest (render.py), TCP_NODELAY on paramiko's socket (BENCH_PYINFRA_NODELAY=1) and no
                     health checks (BENCH_NO_HEALTH=1): account, directories, artifact, config, unit (release
                     and /etc/systemd/system), `current` and config links, env file, daemon-reload, enable +
                     start in dependency order

After each round both hosts are checked (untimed) against recon's desired state (bench/equivalent/verify.py:
files byte for byte, owners, modes, links, units enabled and active, /health 200). --warmup rounds run
first, untimed. Prints a markdown table (median, min of each; the ratio recon / pyinfra+nodelay of the
medians and of the minimums, goal ≤ 1; load average per round) and with --json FILE the raw figures.
The hosts are torn down at the end unless --keep (then the last round's hosts stay up).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BENCH,
    PYINFRA,
    REPO,
    TOKEN,
    arg_parser,
    hosts_layer,
    load,
    recon_argv,
    table,
    testhosts_env,
    timed,
    work_dir,
    write_json,
)

testhosts_env("/tmp/recon-chain", "127.0.44", "rchain")
EQ = BENCH / "equivalent"
sys.path.insert(0, str(EQ))

import yaml  # noqa: E402
from render import render  # noqa: E402
from verify import check_host  # noqa: E402

from reconciler.spec import load_spec  # noqa: E402
from testhosts import TestHosts  # noqa: E402

# (service, artifact version, port, the service it depends on)
CHAIN = (("orchestrator", "5.0.0", 8080, None), ("vault-service", "4.0.0", 8085, "orchestrator"),
         ("control-center", "5.0.0", 8081, "vault-service"))
RECON, PY = "recon apply", "pyinfra+nodelay"


def chain_spec(artifacts: Path) -> dict:
    """The chain as a spec document (hosts come from a layer)."""
    services = {}
    for name, version, port, after in CHAIN:
        path = artifacts / f"{name}-{version}"
        if not path.is_file():
            raise SystemExit(f"{path} missing: run .venv/bin/python -m reconciler.standin.build --out artifacts")
        services[name] = {"version": version, "port": port, "depends_on": [after] if after else [],
                          "artifact": {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
                          "config": {"server": {"port": port}}}
    services["vault-service"]["secrets"] = {"VAULT_TOKEN": {"from_env": "VAULT_TOKEN"}}
    return {"version": 1,
            "defaults": {"hosts": ["node1"], "type": "notify", "args": ["--config", "{config_path}"],
                         "restart": {"policy": "on-failure", "delay_s": 1},
                         "limits": {"memory_max": "128M", "memory_high": "96M", "tasks_max": 64},
                         "health": {"http": "http://{address}:{port}/health", "timeout_s": 15},
                         "config": {"server": {"host": "{address}"}}},
            "services": services}


def fresh_pair(pool: TestHosts, settle: float) -> None:
    """Hosts 1 and 2 booted afresh, their boot finished, then `settle` seconds of quiet."""
    pool.down()
    pool.up([1, 2])
    for i in (1, 2):
        pool.exec(i, ["systemctl", "is-system-running", "--wait"], timeout=120)   # running or degraded
    time.sleep(settle)


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, runs=3, settle=3, keep="leave the last round's hosts running",
                    settle_help="seconds to wait after each boot")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        raise SystemExit("--runs: want at least 1")
    if not PYINFRA.exists():
        raise SystemExit(f"{PYINFRA} missing: run bench/setup.sh")
    work = work_dir()
    work.mkdir(parents=True, exist_ok=True)
    pool = TestHosts()
    spec_file = work / "chain.yaml"
    spec_file.write_text(yaml.safe_dump(chain_spec(REPO / "artifacts"), sort_keys=False))
    os.environ["BENCH_VAULT_TOKEN"] = TOKEN     # verify.py reads the secrets' values from here
    env = {**os.environ, "NO_COLOR": "1", "VAULT_TOKEN": TOKEN}
    env.pop("PYTHONDONTWRITEBYTECODE", None)   # as a user runs them: modules load from their .pyc
    rendered = work / "rendered"
    times: dict[str, list[float]] = {RECON: [], PY: []}
    loads: list[float] = []
    load_before = load()
    try:
        for k in range(args.warmup + args.runs):
            fresh_pair(pool, args.settle)
            h1, h2 = pool.host(1), pool.host(2)
            layers = [hosts_layer(pool, [h], work / f"chain-hosts-{h.index}.yaml", vault_from_env=False,
                                  batch_all=False) for h in (h1, h2)]
            files = [spec_file, layers[0]]
            if k == 0:
                render([str(f) for f in files], rendered)     # the manifest pyinfra installs from
                spec = load_spec([str(f) for f in files])
            state = work / "chain-state"
            shutil.rmtree(state, ignore_errors=True)
            pyinfra_env = {**env, "BENCH_HOSTS": h2.address, "BENCH_KEY": str(pool.key),
                           "BENCH_KNOWN_HOSTS": str(pool.known_hosts), "BENCH_RENDERED": str(rendered),
                           "BENCH_PYINFRA_NODELAY": "1", "BENCH_NO_HEALTH": "1"}
            now = load()
            t_recon = timed(recon_argv("apply", files, state, "--auto-approve"), env)
            t_py = timed([str(PYINFRA), "-y", str(EQ / "inventory.py"), str(EQ / "deploy.py")], pyinfra_env)
            bad = {i: p for i in (1, 2) if (p := check_host(pool, spec, i, rendered))}
            if bad:
                raise SystemExit(f"round {k + 1}: hosts differ from recon's desired state: {bad}")
            warm = k < args.warmup
            print(f"{'warm-up' if warm else 'round'} {k + 1 - (0 if warm else args.warmup)}: {RECON} "
                  f"{t_recon:.2f} s, {PY} {t_py:.2f} s (load {now:.1f})", file=sys.stderr, flush=True)
            if not warm:
                times[RECON].append(t_recon)
                times[PY].append(t_py)
                loads.append(now)
    finally:
        if not args.keep:
            pool.down()
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    ratio = {"median": med[RECON] / med[PY], "min": low[RECON] / low[PY]}
    chain = " → ".join(name for name, *_ in CHAIN)
    print(f"\nFresh apply of {chain} on 1 host, fresh hosts each round; {args.runs} round(s) after {args.warmup} "
          f"warm-up, {RECON} then {PY}; load average {load_before:.1f} before, {load():.1f} after "
          f"(per round {min(loads):.1f}–{max(loads):.1f})\n")
    print(table(["fresh apply", "median", "min"],
                [(k, f"{med[k]:.2f} s", f"{low[k]:.2f} s") for k in times]))
    print()
    print(table(["ratio", "of medians", "of minimums", "goal"],
                [(f"{RECON} / {PY}", f"{ratio['median']:.2f}×", f"{ratio['min']:.2f}×", "≤ 1")], "lrrl"))
    print()
    print(table(["round", "load", RECON, PY],
                [(i, f"{ld:.1f}", f"{a:.2f} s", f"{b:.2f} s")
                 for i, (ld, a, b) in enumerate(zip(loads, times[RECON], times[PY], strict=True), 1)]))
    write_json(args.json_out, {"chain": [name for name, *_ in CHAIN], "runs": times, "median": med, "min": low,
                               "ratio": ratio, "load_per_round": loads, "load_before": load_before,
                               "load_after": load(), "warmup": args.warmup, "settle_s": args.settle})
    return 0


if __name__ == "__main__":
    sys.exit(main())
