"""Shared pytest fixtures: real systemd test hosts (testhosts) for tests marked `host`.

- ``testhosts_pool`` (session): a TestHosts with a directory, net and prefix of its own for this run
  (slot K of RECON_TEST_HOSTS_BASE, default /tmp/recon-pytest-hosts: net 127.0.(200+K), prefix rptK;
  a slot is held with a lock file, so concurrent runs and xdist workers get different slots). Hosts a
  crashed earlier run left in the slot are halted at start; every host is halted at the end.
- ``testhost`` (function): ONE fresh host with an index no other live host has, halted after the test.
- ``make_testhosts`` (function): factory, ``make_testhosts(n)`` -> n fresh hosts (booted in parallel),
  halted after the test.
- ``testhosts_spec`` (function): ``testhosts_spec(hosts, names=None)`` -> a recon spec `hosts:` mapping,
  ``{"node1": hosts[0].spec_entry(), ...}``.

Test hosts share this machine's network namespace: a service a test runs on one must listen on that host's
address (`{address}` in a spec), never on 127.0.0.1 or 0.0.0.0, or tests on other xdist workers (or other
runs) that use the same port collide with it.

A host that cannot boot FAILS the test (never skips), with the harness's error and console log.
Tests that use these fixtures are marked `host` automatically (deselect with ``-m "not host"``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from testhosts import MAX_INDEX, TestHost, TestHostError, TestHosts, hosts_spec

POOL_BASE = Path(os.environ.get("RECON_TEST_HOSTS_BASE", "/tmp/recon-pytest-hosts"))
SLOTS = 40  # concurrent pytest runs (or xdist workers) on one machine; slot K uses net 127.0.(200+K)
HOST_FIXTURES = frozenset({"testhosts_pool", "testhost", "make_testhosts"})

# recon's output is as wide as $COLUMNS, else unwrapped on a pipe: the tests read it as a pipe gets it,
# whatever started pytest (xdist workers start with COLUMNS=80 LINES=24, which wrapped plans and tables).
# A test that wants a width sets COLUMNS itself.
for _var in ("COLUMNS", "LINES"):
    os.environ.pop(_var, None)

MakeTestHosts = Callable[[int], list[TestHost]]
HostsSpec = Callable[..., dict[str, dict[str, object]]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HOST_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.host)


def _keep_the_gevent_hub_alive() -> None:
    """An xdist worker waits for its next test on an Event that execnet's own (native) thread sets. Once a
    test has imported recon's transport, which gevent-patches the process, that wait runs in gevent's hub,
    which sees nothing else to wait for and gives up (LoopExit: the worker crashes). A greenlet that naps
    keeps the hub waiting until the Event is set."""
    import sys

    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading") or getattr(monkey, "_recon_keepalive", False):
        return
    import gevent

    def nap() -> None:
        while True:
            gevent.sleep(0.05)

    monkey._recon_keepalive = gevent.spawn(nap)  # type: ignore[attr-defined]


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish() -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _keep_the_gevent_hub_alive()


def forget_known_hosts_cache() -> None:
    """pyinfra memoizes known_hosts per path for the process: drop that after (re)boots. Imported here,
    not at the top: importing recon's transport gevent-patches the process, which only tests that
    connect in-process should pay for."""
    from reconciler.transport import forget_known_hosts_cache as forget

    forget()


def _acquire_slot() -> tuple[int, int]:
    """(slot, fd of its held lock file); the lock dies with this process, so a crashed run frees it."""
    POOL_BASE.mkdir(parents=True, exist_ok=True)
    for slot in range(SLOTS):
        fd = os.open(POOL_BASE / f"slot{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return slot, fd
    pytest.fail(f"all {SLOTS} test host slots in {POOL_BASE} are in use by other test runs", pytrace=False)


class _Indices:
    """Hands out host indices round-robin over 1..254, skipping live ones: each test gets fresh ones."""

    def __init__(self) -> None:
        self._next = 1

    def take(self, pool: TestHosts, n: int) -> list[int]:
        live = {h.index for h in pool.running()}
        free = MAX_INDEX - len(live)
        if n > free:
            pytest.fail(f"{n} test hosts wanted, only {free} indices free in {pool.dir}", pytrace=False)
        res: list[int] = []
        while len(res) < n:
            i = self._next
            self._next = i % MAX_INDEX + 1
            if i not in live and not pool.base(i).exists():
                res.append(i)
        return res


@pytest.fixture(scope="session")
def testhosts_pool() -> Iterator[TestHosts]:
    slot, fd = _acquire_slot()
    try:
        pool = TestHosts(POOL_BASE / f"slot{slot}", net=f"127.0.{200 + slot}", prefix=f"rpt{slot}")
        error = ""
        try:
            pool.down()  # leftovers of a crashed earlier run in this slot
        except TestHostError as e:
            error = str(e)
        if error:
            pytest.fail(f"cannot clean up test hosts of an earlier run:\n{error}", pytrace=False)
        yield pool
        pool.down()
        shutil.rmtree(pool.dir, ignore_errors=True)
    finally:
        os.close(fd)


@pytest.fixture(scope="session")
def _testhost_indices() -> _Indices:
    return _Indices()


@pytest.fixture
def make_testhosts(testhosts_pool: TestHosts, _testhost_indices: _Indices) -> Iterator[MakeTestHosts]:
    booted: list[int] = []

    def make(n: int = 1) -> list[TestHost]:
        indices = _testhost_indices.take(testhosts_pool, n)
        booted.extend(indices)
        try:
            hosts = testhosts_pool.up(indices)
        except TestHostError as e:
            error = str(e)
        else:
            forget_known_hosts_cache()
            return hosts
        pytest.fail(f"test host(s) failed to boot:\n{error}", pytrace=False)

    yield make
    if booted:
        testhosts_pool.down(booted)
        forget_known_hosts_cache()


@pytest.fixture
def testhost(make_testhosts: MakeTestHosts) -> TestHost:
    return make_testhosts(1)[0]


@pytest.fixture
def testhosts_spec() -> HostsSpec:
    def spec(hosts: Sequence[TestHost], names: Sequence[str] | None = None) -> dict[str, dict[str, object]]:
        return hosts_spec(hosts, names)

    return spec


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[Path, str]]:
    """Stand-in artifacts the host tests deploy: (service, version) -> (path, sha256)."""
    from reconciler.standin.build import build

    out = tmp_path_factory.mktemp("artifacts")
    items = [("orchestrator", "5.0.0"), ("orchestrator", "5.0.1"), ("control-center", "5.0.0"),
             ("control-center", "5.0.1"), ("control-center", "5.0.2-unhealthy"), ("mcp-server", "5.0.0")]
    return build(out, items)


# --------------------------------------------------------------------------- PostgreSQL (issue 11)
@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """A real PostgreSQL 15 server for this test session (tests/pgserver.py); PGPASSWORD is set for it."""
    from pgserver import PASSWORD, start_server

    srv = start_server()
    old = os.environ.get("PGPASSWORD")
    os.environ["PGPASSWORD"] = PASSWORD
    try:
        yield srv
    finally:
        if old is None:
            os.environ.pop("PGPASSWORD", None)
        else:
            os.environ["PGPASSWORD"] = old
        srv.stop()


@pytest.fixture()
def pg_url(pg_server: object) -> str:
    """A fresh, empty database on the session's server, as a URL without a password."""
    return pg_server.url(pg_server.new_database())  # type: ignore[attr-defined]
