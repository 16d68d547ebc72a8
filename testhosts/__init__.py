"""Real systemd test hosts for recon's tests, its demo and its benchmarks (not part of recon itself).

One job: give recon real hosts to reconcile. Each test host is a ``systemd-nspawn`` container running
systemd as PID 1 on this machine, with its own sshd on its own loopback address (host I at NET.I, all of
127/8 routes to lo), reachable over real SSH (generated ed25519 client key, generated host keys, a
``known_hosts`` for strict host-key checking) and, for the harness itself, through ``nsenter``.

Root filesystem of a host: an overlay (lower = this machine's ``/``, upper = a tmpfs), mounted in a
private mount namespace that dies with the container, so every write vanishes at ``down``. cgroups
(v1/hybrid machines): the container lives in its own child cgroups, and the v1 ``memory``, ``pids``,
``cpu`` and ``cpuacct`` hierarchies are made writable inside it, so ``MemoryMax=``, ``TasksMax=`` and
``CPUQuota=`` are really enforced. Units a test host does not need are masked, the machine's own
unit enablements (``/etc/systemd/system/*.wants``) are dropped, sshd gets a self-contained config, and
root gets an empty ``.bashrc``/``.profile``. ``/etc`` stays writable (``useradd`` works), and services
may bind the host's address.

Python API::

    hosts = TestHosts()                 # dir/net/prefix default to $TESTHOSTS_DIR/_NET/_PREFIX
    h1, h2 = hosts.up([1, 2])           # boots in parallel, keeps running ones -> list[TestHost]
    hosts.ssh(1, "systemctl is-system-running")   # real ssh -> CompletedProcess[str]
    hosts.exec(1, ["cat", "/etc/hostname"])       # nsenter, clean env -> CompletedProcess[str]
    h1.spec_entry()                     # recon spec `hosts:` entry
    hosts.down()                        # halt all (in parallel), remove cgroups and dirs

CLI: ``python -m testhosts up N | down | list | ssh I CMD.. | exec I CMD.. | addr I | spec I..``

Every step above was verified on Debian 12 (systemd 252, PID 1 not systemd, hybrid cgroups), the machine
kind the project's tests and CI run on; docs/design.md ("Test hosts") says why the tests use real hosts.

Modules: ``model`` (constants, TestHost, errors), ``proc`` (process, cgroup and port helpers),
``boot`` (TestHosts: boot, halt, ssh/exec), ``cli`` (the command line).
"""

from testhosts.boot import TestHosts
from testhosts.model import MAX_INDEX, TestHost, TestHostError, hosts_spec

__all__ = ["MAX_INDEX", "TestHost", "TestHostError", "TestHosts", "hosts_spec"]
