"""The scaffolding recon's benchmarks share: test-host settings and lifecycle, hosts layers, timing whole
processes, the OpenSSH baseline command, load average, markdown tables and JSON output.

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import REPO, SPECS, TOKEN, hosts_layer, testhosts_env, timed, ...

`testhosts_env(dir, net, prefix)` sets TESTHOSTS_DIR/_NET/_PREFIX unless they are set already (each bench
has its own, so that two benches never share hosts); call it before reading `os.environ["TESTHOSTS_DIR"]`.
Importing this module puts the repository on sys.path (for `reconciler` and `testhosts`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testhosts import TestHost, TestHosts  # noqa: E402

SPECS = [str(REPO / "specs/platform.yaml"), str(REPO / "specs/overrides/local.yaml")]
TOKEN = "bench-vault-token"
PYINFRA = BENCH / ".venv/bin/pyinfra"


def testhosts_env(directory: str, net: str, prefix: str) -> None:
    """This bench's test-host directory, address prefix and container prefix, unless the caller set them."""
    os.environ.setdefault("TESTHOSTS_DIR", directory)
    os.environ.setdefault("TESTHOSTS_NET", net)
    os.environ.setdefault("TESTHOSTS_PREFIX", prefix)


def arg_parser(doc: str, runs: int, settle: float | None = None, *,
               keep: str = "leave the hosts running (and skip booting if up)",
               settle_help: str = "seconds to wait after the applies before timing") -> argparse.ArgumentParser:
    """The options every host bench has: --runs, --keep, --json FILE, and --settle when `settle` is given;
    the description is the first line of `doc`."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--runs", type=int, default=runs, help=f"timed runs (default {runs})")
    ap.add_argument("--keep", action="store_true", help=keep)
    ap.add_argument("--json", dest="json_out", metavar="FILE", help="also write the raw figures here")
    if settle is not None:
        ap.add_argument("--settle", type=float, default=settle, help=f"{settle_help} (default {settle:g})")
    return ap


def work_dir() -> Path:
    """$TESTHOSTS_DIR, where a bench writes its spec layers and state."""
    return Path(os.environ["TESTHOSTS_DIR"])


@contextlib.contextmanager
def booted(pool: TestHosts, indices: Iterable[int], keep: bool = False) -> Iterator[list[TestHost]]:
    """Hosts `indices`, fresh (all of the pool's hosts halted first) unless `keep`; halted again at the end
    unless `keep` (then running ones are reused and left up)."""
    if not keep:
        pool.down()
    try:
        yield pool.up(indices)
    finally:
        if not keep:
            pool.down()


def hosts_layer(pool: TestHosts, hosts: Sequence[TestHost], path: Path, *, vault_from_env: bool = True,
                batch_all: bool = True) -> Path:
    """Write a spec layer pointing a spec at `hosts` (node1, node2, ...) and return its path.

    batch_all: every service on every host, all hosts in one batch (the platform's benches). vault_from_env:
    vault-service's VAULT_TOKEN from the environment (the demo override reads it from the demo's file)."""
    import yaml

    names = [f"node{i}" for i in range(1, len(hosts) + 1)]
    doc: dict[str, Any] = {"version": 1,
                           "hosts": {n: {"address": h.address, "user": "root", "ssh_key": str(pool.key),
                                         "known_hosts": str(pool.known_hosts)}
                                     for n, h in zip(names, hosts, strict=True)}}
    if batch_all:
        doc["defaults"] = {"hosts": names, "rollout": {"batch_size": "100%", "max_failures": 0}}
    if vault_from_env:
        doc["services"] = {"vault-service": {"secrets": {"VAULT_TOKEN": {"from_file": None,
                                                                        "from_env": "VAULT_TOKEN"}}}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def file_args(files: Iterable[str | Path]) -> list[str]:
    """`-f F` for each spec file."""
    return [x for f in files for x in ("-f", str(f))]


def recon_argv(command: str, files: Iterable[str | Path], state: str | Path, *extra: str) -> list[str]:
    """`python -m reconciler COMMAND -f ... --state STATE --no-color EXTRA...` with this interpreter."""
    return [sys.executable, "-m", "reconciler", command, *file_args(files), "--state", str(state), "--no-color",
            *extra]


def ssh_argv(pool: TestHosts, host: TestHost, *command: str) -> list[str]:
    """OpenSSH to `host` as root with the pool's key and known_hosts, strict host keys, no prompts."""
    return ["ssh", "-i", str(pool.key), "-o", "StrictHostKeyChecking=yes", "-o",
            f"UserKnownHostsFile={pool.known_hosts}", "-o", "BatchMode=yes", f"root@{host.address}", *command]


def timed(argv: list[str], env: dict[str, str], timeout: float = 600) -> float:
    """Seconds the whole process `argv` took (run in the repository, no stdin); exit with its output if it
    fails."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=timeout)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return elapsed


def load() -> float:
    """The one-minute load average."""
    return os.getloadavg()[0]


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A markdown table; `align` has one letter per column, `l` or `r` (default: the first left, the rest
    right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def times_table(times: dict[str, list[float]], first: str = "command") -> str:
    """| FIRST | median | min | of each timed thing, in seconds."""
    return table([first, "median", "min"],
                 [(k, f"{statistics.median(v):.3f} s", f"{min(v):.3f} s") for k, v in times.items()])


def runs_header(runs: int, load_before: float, how: str = "interleaved", what: str = "") -> str:
    """The line above a bench's tables (blank lines around it): what was measured, runs, order and the load
    average before and now."""
    return f"\n{what}{runs} runs each, {how}; load average {load_before:.1f} before, {load():.1f} after\n"


def write_json(path: str | Path | None, data: object) -> None:
    """`data` as indented JSON into `path` (nothing when path is None)."""
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
