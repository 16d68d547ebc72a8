"""Archive releases on one real test host: a fresh apply of a tree against pyinfra shipping the same tree, and
what a tree costs a converged plan, in one run.

    sudo .venv/bin/python bench/archive_release.py [--files 300] [--runs 5] [--keep] [--json FILE]

Boots one test host (testhosts; TESTHOSTS_DIR/_NET/_PREFIX default /tmp/recon-archive-bench, 127.0.43,
rarch). The release is the tree stand-in (`reconciler/standin/tree.py`) plus `--files` assets of 2 KiB under
`www/assets/` (a web UI's shape), as a tar.gz. Timed, interleaved round-robin, `--runs` times each, the host
reset between fresh runs (service stopped, its release, config and unit removed; not timed):

  recon apply (fresh)          recon apply --auto-approve of the archive service: upload, unpack, switch, start,
                               health gate
  pyinfra untar (fresh)        bench/equivalent/archive_deploy.py: put the tar.gz, `tar -x` on the host, config,
                               links, unit, restart (no health check), with TCP_NODELAY
  pyinfra files.sync (fresh)   the same with `files.sync` of the unpacked tree
  ssh true                     one OpenSSH login (the floor of a plan)
  plan (small tree)            converged `recon plan` of the stand-in tree alone (10 entries)
  plan (N-file tree)           converged `recon plan` of the large tree: the observation's treesum over N files

Prints medians (min) and ratios: recon / pyinfra for the fresh apply, plan (N files) / plan (small tree).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    arg_parser,
    booted,
    load,
    medians,
    runs_header,
    ssh_argv,
    table,
    testhosts_env,
    timed,
    times_table,
    write_json,
)

testhosts_env("/tmp/recon-archive-bench", "127.0.43", "rarch")

import yaml  # noqa: E402

from reconciler.standin import tree as standin_tree  # noqa: E402
from testhosts import TestHost, TestHosts  # noqa: E402

WORK = Path(os.environ["TESTHOSTS_DIR"]) / "archive-bench"
PYINFRA = Path(sys.executable).with_name("pyinfra")


def big_tree(n: int, version: str = "1.0.0") -> bytes:
    """The stand-in tree plus `n` 2 KiB assets in 10 directories, as a deterministic tar.gz."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(standin_tree.archive_bytes(version)), mode="r:gz") as small, \
            tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for m in small.getmembers():
            tar.addfile(m, small.extractfile(m) if m.isreg() else None)
        for d in range(10):
            info = tarfile.TarInfo(f"./www/assets/d{d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for i in range(n):
            data = hashlib.sha256(f"{i}".encode()).hexdigest().encode() * 32
            info = tarfile.TarInfo(f"./www/assets/d{i % 10}/asset-{i}.js")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def spec(host: dict, name: str, archive: Path, port: int) -> dict:
    return {"version": 1, "hosts": {"node1": host}, "services": {name: {
        "version": "1.0.0", "port": port, "args": ["--port", "{port}"],
        "artifact": {"path": str(archive), "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
                     "entrypoint": standin_tree.ENTRYPOINT},
        "health": {"http": "http://127.0.0.1:{port}/health", "timeout_s": 30, "interval_s": 0.1}}}}


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, runs=5, keep="leave the host running (and skip booting if up)")
    ap.add_argument("--files", type=int, default=300)
    args = ap.parse_args(argv)
    pool = TestHosts()
    with booted(pool, [1], args.keep) as (h,):
        return bench(args, pool, h)


def bench(args: argparse.Namespace, pool: TestHosts, h: TestHost) -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    env = {**os.environ, "NO_COLOR": "1", "BENCH_HOSTS": h.address, "BENCH_KEY": str(pool.key),
           "BENCH_KNOWN_HOSTS": str(pool.known_hosts), "BENCH_PYINFRA_NODELAY": "1"}
    entry = h.spec_entry()
    big, small = WORK / "web-big.tar.gz", WORK / "web-small.tar.gz"
    big.write_bytes(big_tree(args.files))
    small.write_bytes(standin_tree.archive_bytes("1.0.0"))
    specs = {}
    for name, archive, port in (("web-big", big, 8201), ("web-small", small, 8202)):
        specs[name] = WORK / f"{name}.yaml"
        specs[name].write_text(yaml.safe_dump(spec(entry, name, archive, port), sort_keys=False))

    def recon(command: str, name: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "reconciler", command, "-f", str(specs[name]), "--state",
                str(WORK / f"state-{name}"), "--no-color", *extra]

    # what pyinfra installs: recon's own rendered config and unit, the same paths
    from reconciler import pipeline

    run = pipeline.prepare([str(specs["web-big"])], str(WORK / "state-web-big"))
    d = run.desired["node1"]["web-big"]
    pdir = WORK / "pyinfra"
    (pdir / "tree").mkdir(parents=True)
    shutil.copy(big, pdir / "tree.tar.gz")
    subprocess.run(["tar", "-xzf", str(big), "-C", str(pdir / "tree")], check=True)
    (pdir / "config.toml").write_text(d.config_text)
    (pdir / "unit.service").write_text(d.unit_text)
    (pdir / "release.json").write_text(json.dumps({
        "release_dir": d.release_dir, "service_dir": d.service_dir, "config_path": d.config_path,
        "unit_path": d.unit_path, "unit_name": d.unit_name}))
    reset = (f"systemctl disable -q --now {d.unit_name} 2>/dev/null; rm -rf {d.service_dir} {d.config_path} "
             f"{d.unit_path}; systemctl daemon-reload")

    def fresh_recon() -> list[str]:
        shutil.rmtree(WORK / "state-web-big", ignore_errors=True)
        return recon("apply", "web-big", "--auto-approve")

    def pyinfra(mode: str) -> tuple[list[str], dict[str, str]]:
        return ([str(PYINFRA), "-y", str(REPO / "bench/equivalent/inventory.py"),
                 str(REPO / "bench/equivalent/archive_deploy.py")],
                {**env, "BENCH_ARCHIVE_DIR": str(pdir), "BENCH_ARCHIVE_MODE": mode})

    fresh = {"recon apply (fresh)": lambda: (fresh_recon(), env),
             "pyinfra untar (fresh)": lambda: pyinfra("untar"),
             "pyinfra files.sync (fresh)": lambda: pyinfra("sync")}
    times: dict[str, list[float]] = {k: [] for k in fresh}
    load_before = load()
    for make in fresh.values():     # warm-up (also checks each one works)
        pool.exec(1, reset, check=True)
        timed(*make())
    for _ in range(args.runs):
        for k, make in fresh.items():
            pool.exec(1, reset, check=True)
            a, e = make()
            times[k].append(timed(a, e))
    pool.exec(1, reset, check=True)
    for name in specs:
        shutil.rmtree(WORK / f"state-{name}", ignore_errors=True)
        timed(recon("apply", name, "--auto-approve"), env)
    plans = {"ssh true": ssh_argv(pool, h, "true"),
             "plan (small tree)": recon("plan", "web-small", "--detailed-exitcode"),
             f"plan ({args.files}-file tree)": recon("plan", "web-big", "--detailed-exitcode")}
    for a in plans.values():
        timed(a, env)
    times.update({k: [] for k in plans})
    for _ in range(args.runs):
        for k, a in plans.items():
            times[k].append(timed(a, env))
    med = medians(times)
    print(runs_header(args.runs, load_before, what=f"{args.files} assets + the stand-in tree "
                      f"({big.stat().st_size // 1024} KiB tar.gz); "))
    print(times_table(times))
    r = med["recon apply (fresh)"]
    big_plan = f"plan ({args.files}-file tree)"
    print()
    print(table(["ratio", "value"], [
        (f"recon apply / {k}", f"{r / med[k]:.2f}×") for k in ("pyinfra untar (fresh)", "pyinfra files.sync (fresh)")
    ] + [(f"{big_plan} / plan (small tree)", f"{med[big_plan] / med['plan (small tree)']:.2f}×"),
         ("plan (small tree) / ssh true", f"{med['plan (small tree)'] / med['ssh true']:.2f}×")]))
    write_json(args.json_out, {"runs": times, "median": med})
    return 0

if __name__ == "__main__":
    sys.exit(main())
