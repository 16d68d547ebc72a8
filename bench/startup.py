"""Startup cost of whole processes: recon's quick commands against pyinfra's and Ansible's CLIs.

    bench/setup.sh                                  # bench/.venv with pyinfra and ansible-core
    .venv/bin/python bench/startup.py [--runs 20] [--warmup 3] [--json FILE]

Builds the stand-in artifacts first (`recon validate` checks their sha256), then times each command
as a whole process (subprocess + time.perf_counter; or hyperfine when installed and --hyperfine),
runs interleaved round-robin so machine noise hits every command alike, and prints a markdown table:
median, min, and how many times faster than `pyinfra --version` / `ansible-playbook --version` (the
cheapest thing either tool can do). Then it checks, with `python -X importtime`, that `recon validate`
and `recon explain` never import pyinfra, deepdiff, paramiko (or gevent): exit 1 if one does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RECON_PY = REPO / ".venv/bin/python"
RECON = REPO / ".venv/bin/recon"
PYINFRA = BENCH / ".venv/bin/pyinfra"
ANSIBLE_PLAYBOOK = BENCH / ".venv/bin/ansible-playbook"
SPEC = "specs/platform.yaml"
OVERRIDE = "specs/overrides/local.yaml"
FORBIDDEN = ("pyinfra", "deepdiff", "paramiko", "gevent")
REQUIRED_ABSENT = ("pyinfra", "deepdiff", "paramiko")

RECON_CMDS: list[tuple[str, list[str]]] = [
    ("recon --help", [str(RECON), "--help"]),
    (f"recon validate -f {SPEC}", [str(RECON), "validate", "-f", SPEC]),
    (f"recon validate -f {SPEC} (cold: RECON_NO_CACHE=1)",
     ["env", "RECON_NO_CACHE=1", str(RECON), "validate", "-f", SPEC]),
    (f"recon explain orchestrator.limits.memory_max -f {SPEC} -f {OVERRIDE}",
     [str(RECON), "explain", "orchestrator.limits.memory_max", "-f", SPEC, "-f", OVERRIDE]),
]
BASELINES: list[tuple[str, list[str]]] = [
    ("pyinfra --version", [str(PYINFRA), "--version"]),
    ("ansible-playbook --version", [str(ANSIBLE_PLAYBOOK), "--version"]),
]
IMPORT_CHECKS: list[tuple[str, list[str]]] = [
    (f"recon validate -f {SPEC}", ["validate", "-f", SPEC]),
    (f"recon explain orchestrator.limits.memory_max -f {SPEC} -f {OVERRIDE}",
     ["explain", "orchestrator.limits.memory_max", "-f", SPEC, "-f", OVERRIDE]),
]


def run_once(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.decode()[-500:]}")
    return elapsed


def measure(cmds: list[tuple[str, list[str]]], runs: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for _, cmd in cmds:
            run_once(cmd)
    times: dict[str, list[float]] = {name: [] for name, _ in cmds}
    for _ in range(runs):
        for name, cmd in cmds:  # interleaved: drift in machine load hits every command alike
            times[name].append(run_once(cmd))
    return times


def measure_hyperfine(cmds: list[tuple[str, list[str]]], runs: int, warmup: int) -> dict[str, list[float]]:
    import shlex
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        subprocess.run(["hyperfine", "-N", "--style", "none", "--runs", str(runs), "--warmup", str(warmup),
                        "--export-json", tmp.name, *[shlex.join(c) for _, c in cmds]],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        data = json.loads(Path(tmp.name).read_text())
    return {name: r["times"] for (name, _), r in zip(cmds, data["results"], strict=True)}


def imported_modules(args: list[str]) -> set[str]:
    r = subprocess.run([str(RECON_PY), "-X", "importtime", "-m", "reconciler", *args], cwd=REPO,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"python -m reconciler {' '.join(args)} exited {r.returncode}: {r.stderr[-500:]}")
    mods = set()
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":
                mods.add(name)
    return mods


def version_of(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    return (r.stdout or r.stderr).strip().splitlines()[0]


def ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--hyperfine", action="store_true", help="use hyperfine (if installed) instead")
    ap.add_argument("--json", dest="json_out", help="also write the raw timings here")
    args = ap.parse_args(argv)
    for exe in (PYINFRA, ANSIBLE_PLAYBOOK):
        if not exe.exists():
            sys.exit(f"{exe} missing: run bench/setup.sh")
    subprocess.run([str(RECON_PY), "-m", "reconciler.standin.build", "--out", "artifacts"], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL)

    cmds = RECON_CMDS + BASELINES
    use_hf = args.hyperfine and shutil.which("hyperfine")
    times = (measure_hyperfine if use_hf else measure)(cmds, args.runs, args.warmup)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    py_base, an_base = med[BASELINES[0][0]], med[BASELINES[1][0]]

    print(f"Startup, whole processes: {args.runs} runs each after {args.warmup} warm-up"
          f"{' (hyperfine)' if use_hf else ', interleaved (subprocess + perf_counter)'}; "
          f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f} at the end); "
          f"{version_of([str(PYINFRA), '--version'])}, {version_of([str(ANSIBLE_PLAYBOOK), '--version'])}.")
    print()
    print("| command | median | min | speed-up vs `pyinfra --version` | speed-up vs `ansible-playbook --version` |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, _ in cmds:
        print(f"| `{name}` | {ms(med[name])} | {ms(min(times[name]))} | {py_base / med[name]:.1f}× | "
              f"{an_base / med[name]:.1f}× |")
    print()

    failed = False
    for name, cmd_args in IMPORT_CHECKS:
        mods = imported_modules(cmd_args)
        top = {m.split(".")[0] for m in mods}
        hits = [f for f in FORBIDDEN if f in top]
        bad = [f for f in REQUIRED_ABSENT if f in top]
        failed |= bool(bad)
        verdict = "OK" if not hits else f"IMPORTS {', '.join(hits)}"
        print(f"imports of `{name}` ({len(mods)} modules): {verdict}"
              f" (checked: {', '.join(FORBIDDEN)})")

    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"runs": args.runs, "times_s": times}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
