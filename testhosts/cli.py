"""The test-host command line: `python -m testhosts up N | down | list | ssh | exec | addr | spec`."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence

from testhosts.boot import TestHosts
from testhosts.model import DEFAULT_DIR, DEFAULT_NET, DEFAULT_PREFIX, MAX_INDEX, TestHostError


def _cli(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m testhosts",
        description="Real systemd test hosts (systemd-nspawn, systemd as PID 1, sshd on NET.I).",
    )
    p.add_argument("--dir", help=f"state directory (env TESTHOSTS_DIR, default {DEFAULT_DIR})")
    p.add_argument("--net", help=f"address prefix NET of NET.I (env TESTHOSTS_NET, default {DEFAULT_NET})")
    p.add_argument("--prefix", help=f"container name prefix (env TESTHOSTS_PREFIX, default {DEFAULT_PREFIX})")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("up", help="boot hosts 1..N (running ones are kept)")
    s.add_argument("n", type=int)
    s = sub.add_parser("down", help="halt every host, remove cgroups and dirs")
    s.add_argument("--graceful", action="store_true", help="clean poweroff instead of a kill")
    sub.add_parser("list", help="index, address, name, PID 1, boot time, memory of each running host")
    for c, what in (("ssh", "over SSH"), ("exec", "with nsenter")):
        s = sub.add_parser(c, help=f"run CMD on host I {what} (one argument: through a shell)")
        s.add_argument("i", type=int)
        s.add_argument("command", nargs=argparse.REMAINDER)
    s = sub.add_parser("addr", help="print host I's address")
    s.add_argument("i", type=int)
    s = sub.add_parser("spec", help="print a recon spec `hosts:` mapping (nodeI) for hosts I.. (default all)")
    s.add_argument("indices", type=int, nargs="*")
    a = p.parse_args(argv)
    th = TestHosts(a.dir, a.net, a.prefix)

    if a.cmd == "up":
        if not 1 <= a.n <= MAX_INDEX:
            p.error(f"up N: want 1..{MAX_INDEX}")
        before = {h.index for h in th.running()}
        t0 = time.monotonic()
        hosts = th.up(range(1, a.n + 1))
        ms = round((time.monotonic() - t0) * 1000)
        booted = [h for h in hosts if h.index not in before]
        print(
            f"testhosts: {len(hosts)} host(s) up ({len(booted)} booted) in {ms} ms; "
            f"key {th.key}, known_hosts {th.known_hosts}"
        )
    elif a.cmd == "down":
        t0 = time.monotonic()
        n = len(th._indices_on_disk())
        th.down(graceful=a.graceful)
        print(f"testhosts: {n} host(s) down in {round((time.monotonic() - t0) * 1000)} ms")
    elif a.cmd == "list":
        total = 0
        hosts = th.running()
        for h in hosts:
            mem = th.memory(h.index)
            total += mem
            print(
                f"{h.index}\t{h.address}\t{h.name}\tpid1={h.leader_pid}\tboot={th.boot_ms(h.index)}ms"
                f"\tmem={mem / 2**20:.0f}MiB"
            )
        if hosts:
            per_host = total / len(hosts) / 2**20
            print(f"hosts={len(hosts)} total_mib={total / 2**20:.0f} per_host_mib={per_host:.1f}")
    elif a.cmd in ("ssh", "exec"):
        cmd: str | list[str] = a.command[0] if len(a.command) == 1 else a.command
        if a.cmd == "ssh":
            # several words: hand them to ssh as they are (the remote shell joins them, like ssh does)
            argv = th.ssh_argv(a.i, cmd) if isinstance(cmd, str) else [*th.ssh_argv(a.i), "--", *cmd]
        else:
            if not cmd:
                p.error("exec I CMD..")
            argv = th.exec_argv(a.i, cmd)
        return subprocess.run(argv).returncode
    elif a.cmd == "addr":
        print(th.address(a.i))
    elif a.cmd == "spec":
        indices = a.indices or [h.index for h in th.running()]
        spec = {"hosts": th.spec(indices, [f"node{i}" for i in indices])}
        try:
            import yaml
        except ImportError:
            import json

            print(json.dumps(spec, indent=2))
        else:
            print(yaml.safe_dump(spec, sort_keys=False), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _cli(argv)
    except TestHostError as e:
        print(f"testhosts: {e}", file=sys.stderr)
        return 1




