"""Time the pyinfra deploy and the Ansible playbook that do recon's work, on fresh real test hosts.

    bench/setup.sh && .venv/bin/python bench/equivalent/render.py      # once
    .venv/bin/python bench/equivalents.py --hosts 1 [--hosts 20] [--tools pyinfra,ansible] [--converged-runs 3]

Run with recon's venv (it boots hosts with `testhosts` and checks them with
bench/equivalent/verify.py); the tools themselves run from bench/.venv. Per tool and host count:
tear down and boot N fresh hosts, then time whole processes:

  fresh apply        the first run on fresh hosts (brings all nine services up, health-checked)
  converged dry      a second run with `--dry` (pyinfra) / `--check` (Ansible): must report no change
  converged apply    a real run with nothing to do: must change nothing

after the fresh apply every host is checked against recon's desired state (verify.py: byte-identical
files, modes, symlinks, units enabled + active, /health 200). Converged runs are repeated
(--converged-runs, median and min). Prints a markdown table and the controller CPU time of each run
(user + sys of the tool's process tree); --json FILE also writes the raw figures.
Hosts: TESTHOSTS_DIR/_NET/_PREFIX (default /tmp/recon-bench, 127.0.30, rbench), torn down at the end
unless --keep. BENCH_VAULT_TOKEN is set to a dummy value if absent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TESTHOSTS_DIR", "/tmp/recon-bench")
os.environ.setdefault("TESTHOSTS_NET", "127.0.30")
os.environ.setdefault("TESTHOSTS_PREFIX", "rbench")
os.environ.setdefault("BENCH_VAULT_TOKEN", "bench-vault-token")

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
EQ = BENCH / "equivalent"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(EQ))

from common import hosts_layer  # noqa: E402
from verify import DEFAULT_SPECS, check_host  # noqa: E402

from reconciler.spec import load_spec  # noqa: E402
from testhosts import TestHosts  # noqa: E402

PYINFRA = BENCH / ".venv/bin/pyinfra"
ANSIBLE_PLAYBOOK = BENCH / ".venv/bin/ansible-playbook"
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


class RunFailed(Exception):
    pass


class TimedOut(Exception):
    pass


TIMEOUT_S: float | None = None


CPU_S: list[float] = []   # controller CPU seconds (user + sys) of each timed process tree


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, str]:
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # own session: on timeout the whole process group (Ansible's forked workers too) is stopped
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        log.write_text(f"$ {' '.join(cmd)}\n# timed out after {TIMEOUT_S} s\n")
        raise TimedOut(f"{TIMEOUT_S:.0f}") from exc
    elapsed = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_S.append(ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime)
    r = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    log.write_text(f"$ {' '.join(cmd)}\n# rc={r.returncode} {elapsed:.3f}s\n--- stdout\n{r.stdout}\n"
                   f"--- stderr\n{r.stderr}")
    if r.returncode != 0:
        raise RunFailed(f"{' '.join(cmd)} failed (rc={r.returncode}), see {log}")
    return elapsed, r.stdout


def pyinfra_changes(stdout: str, dry: bool) -> int:
    """Number of (op, host) changes in a `pyinfra --json` output; raises on errors."""
    data = json.loads(stdout[stdout.index("{"):])
    if dry:
        return sum(len(op["hosts_with_change"]) + len(op["hosts_with_conditional_change"])
                   for op in data["plan"])
    res = data["results"]
    if res["failed_hosts"] or res["totals"]["error"]:
        raise RunFailed(f"pyinfra reported errors: {res['failed_hosts']} {res['totals']}")
    return res["totals"]["success"]


def ansible_changes(stdout: str, n_hosts: int) -> int:
    rows = RECAP_RE.findall(stdout)
    if len(rows) != n_hosts:
        raise RunFailed(f"ansible recap names {len(rows)} hosts, want {n_hosts}")
    if any(int(r[3]) or int(r[4]) for r in rows):
        raise RunFailed(f"ansible: unreachable/failed hosts: {rows}")
    return sum(int(r[2]) for r in rows)


def tool_commands(tool: str, inventory: str) -> dict[str, list[str]]:
    if tool == "recon":
        n = inventory.rsplit("-", 1)[1].split(".")[0]
        state = Path(os.environ["TESTHOSTS_DIR"]) / f"recon-state-{n}"
        files = ["-f", str(REPO / "specs/platform.yaml"), "-f", str(REPO / "specs/overrides/local.yaml"),
                 "-f", str(Path(os.environ["TESTHOSTS_DIR"]) / f"recon-hosts-{n}.yaml"), "--state", str(state)]
        recon = [sys.executable, "-m", "reconciler"]
        return {"apply": [*recon, "apply", *files, "--auto-approve", "--no-color"],
                "dry": [*recon, "plan", *files, "--detailed-exitcode", "--no-color"]}
    if tool.startswith("pyinfra"):
        base = [str(PYINFRA), "--json", str(EQ / "inventory.py"), str(EQ / "deploy.py")]
        return {"apply": [base[0], "-y", *base[1:]], "dry": [*base, "--dry"]}
    base = [str(ANSIBLE_PLAYBOOK), "-i", inventory, str(EQ / "playbook.yml")]
    return {"apply": base, "dry": [*base, "--check"]}


def bench_tool(tool: str, n: int, converged_runs: int, logdir: Path, spec) -> dict:
    hosts = TestHosts()
    hosts.down()
    up = hosts.up(list(range(1, n + 1)))
    addresses = [h.address for h in up]
    env = dict(os.environ)
    env.update({
        "BENCH_HOSTS": ",".join(addresses),
        "BENCH_KEY": str(hosts.key),
        "BENCH_KNOWN_HOSTS": str(hosts.known_hosts),
        "ANSIBLE_CONFIG": str(EQ / "ansible.cfg"),
        "BENCH_PYINFRA_NODELAY": "1" if tool == "pyinfra+nodelay" else "",
    })
    inventory = str(Path(os.environ["TESTHOSTS_DIR"]) / f"inventory-{n}.yml")
    subprocess.run([sys.executable, str(EQ / "ansible_inventory.py"), "--write", inventory], env=env,
                   check=True)
    if tool == "recon":
        hosts_layer(hosts, up, Path(os.environ["TESTHOSTS_DIR"]) / f"recon-hosts-{n}.yaml")
        shutil.rmtree(Path(os.environ["TESTHOSTS_DIR"]) / f"recon-state-{n}", ignore_errors=True)
        env["VAULT_TOKEN"] = env["BENCH_VAULT_TOKEN"]
    cmds = tool_commands(tool, inventory)
    tag = f"{tool}-{n}"
    out: dict = {"tool": tool, "hosts": n, "fresh_apply_s": None, "converged_dry_s": None,
                 "converged_apply_s": None, "loadavg_before": round(os.getloadavg()[0], 1)}
    try:
        return _bench_runs(tool, n, converged_runs, logdir, spec, hosts, env, cmds, tag, out)
    except TimedOut as exc:
        out["timed_out_after_s"] = float(str(exc))
        return out


def _bench_runs(tool, n, converged_runs, logdir, spec, hosts, env, cmds, tag, out) -> dict:
    def changes(stdout: str, dry: bool) -> int:
        if tool == "recon":   # `plan --detailed-exitcode` exits 2 (a failed run) when anything would change
            m = re.search(r"Apply complete: (\d+) created", stdout)
            return int(m.group(1)) if m else 0
        if tool.startswith("pyinfra"):
            return pyinfra_changes(stdout, dry)
        return ansible_changes(stdout, n)

    t, stdout = timed(cmds["apply"], env, logdir / f"{tag}-fresh.log")
    out["fresh_apply_s"] = t
    out["fresh_apply_cpu_s"] = CPU_S[-1]
    out["fresh_changes"] = changes(stdout, dry=False)
    problems = {i: check_host(hosts, spec, i) for i in range(1, n + 1)}
    bad = {i: p for i, p in problems.items() if p}
    if bad:
        raise RunFailed(f"{tag}: hosts differ from recon's desired state after the fresh apply: {bad}")
    for kind, dry in (("dry", True), ("apply", False)):
        times = []
        for k in range(converged_runs):
            t, stdout = timed(cmds[kind], env, logdir / f"{tag}-converged-{kind}-{k}.log")
            c = changes(stdout, dry)
            if c:
                raise RunFailed(f"{tag}: converged {kind} run reported {c} change(s)")
            times.append(t)
            out.setdefault(f"converged_{kind}_cpu_s", []).append(CPU_S[-1])
        out[f"converged_{kind}_s"] = times
    return out


def fmt(ts: list[float] | float | None, timeout: float | None = None) -> str:
    if ts is None:
        return f"> {timeout:.0f} s (stopped)" if timeout else "—"
    if isinstance(ts, float):
        return f"{ts:.1f} s"
    if len(ts) == 1:
        return f"{ts[0]:.1f} s"
    return f"{statistics.median(ts):.1f} s (min {min(ts):.1f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, action="append", help="host count (repeatable; default 1)")
    ap.add_argument("--tools", default="pyinfra,ansible",
                    help="comma list of recon, pyinfra, pyinfra+nodelay, ansible (default pyinfra,ansible)")
    ap.add_argument("--converged-runs", type=int, default=3)
    ap.add_argument("--logdir", default=None, help="default: $TESTHOSTS_DIR-logs")
    ap.add_argument("--json", dest="json_out", help="also write the raw figures here")
    ap.add_argument("--keep", action="store_true", help="leave the last hosts running")
    ap.add_argument("--timeout", type=float, default=None,
                    help="stop a tool's run after this many seconds (its remaining runs are skipped)")
    args = ap.parse_args(argv)
    global TIMEOUT_S
    TIMEOUT_S = args.timeout
    for exe in (PYINFRA, ANSIBLE_PLAYBOOK):
        if not exe.exists():
            sys.exit(f"{exe} missing: run bench/setup.sh")
    if not (EQ / "rendered/services.json").exists():
        sys.exit("bench/equivalent/rendered/ missing: run .venv/bin/python bench/equivalent/render.py")
    logdir = Path(args.logdir or os.environ["TESTHOSTS_DIR"] + "-logs")
    logdir.mkdir(parents=True, exist_ok=True)
    spec = load_spec(DEFAULT_SPECS)
    results = []
    try:
        for n in args.hosts or [1]:
            for tool in args.tools.split(","):
                r = bench_tool(tool.strip(), n, args.converged_runs, logdir, spec)
                results.append(r)
                to = r.get("timed_out_after_s")
                print(f"{tool} x{n}: fresh {fmt(r['fresh_apply_s'], to)}, converged dry "
                      f"{fmt(r['converged_dry_s'], to)}, converged apply {fmt(r['converged_apply_s'], to)}",
                      file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            TestHosts().down()
    print("\n| tool | hosts | fresh apply | converged dry-run (no changes) | converged apply | load avg before |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        dry = {"recon": "`plan`"}.get(r["tool"]) or ("`--dry`" if r["tool"].startswith("pyinfra") else "`--check`")
        to = r.get("timed_out_after_s")
        print(f"| {r['tool']} | {r['hosts']} | {fmt(r['fresh_apply_s'], to)} | "
              f"{fmt(r['converged_dry_s'], to)} ({dry}) | {fmt(r['converged_apply_s'], to)} | "
              f"{r['loadavg_before']} |")
    print("\nController CPU (user + sys of the tool's process tree; the test hosts' CPU is not in it):")
    for r in results:
        if r["fresh_apply_s"] is None:
            continue
        cpu = [f"fresh {r['fresh_apply_cpu_s']:.1f} s"]
        for kind in ("dry", "apply"):
            if r.get(f"converged_{kind}_cpu_s"):
                cpu.append(f"converged {kind} {statistics.median(r[f'converged_{kind}_cpu_s']):.1f} s")
        print(f"- {r['tool']} x{r['hosts']}: {', '.join(cpu)}")
    print(f"\nlogs: {logdir}; converged runs: median of {args.converged_runs} (min)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
