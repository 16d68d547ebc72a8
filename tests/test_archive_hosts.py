"""Archive releases on a real systemd host over SSH: the tree stand-in (`reconciler/standin/tree.py`, a shell
entrypoint and data files) deployed from a tar.gz, its files served from the release, a changed archive and a
version bump replaced, a rollback bringing the old tree back, pruning, and malicious archives refused with
nothing touched on the host."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import yaml
from hosttools import _exec, _written, recon, show

from reconciler.archive import read_tree, tree_digest
from reconciler.standin import tree as standin_tree
from testhosts import TestHost

PORT = 8097
UNIT = "provisioning-web.service"
RELEASES = "/opt/provisioning/web/releases"


class Web:
    """A one-service spec whose artifact is a tree stand-in archive."""

    def __init__(self, tmp: Path, host: TestHost) -> None:
        self.dir, self.host = tmp, host
        self.artifact: dict[str, Any] = {}
        self.version = ""

    def use(self, version: str, data: bytes | None = None, url: bool = False) -> None:
        data = standin_tree.archive_bytes(version) if data is None else data
        path = self.dir / f"web-{version}-{hashlib.sha256(data).hexdigest()[:8]}.tar.gz"
        path.write_bytes(data)
        self.version = version
        self.artifact = {("url" if url else "path"): (path.as_uri() if url else str(path)),
                         "sha256": hashlib.sha256(data).hexdigest(), "entrypoint": standin_tree.ENTRYPOINT}

    def run(self, *args: str, check: int | None = None) -> Any:
        spec = self.dir / "spec.yaml"
        spec.write_text(yaml.safe_dump({
            "version": 1, "hosts": {"node1": self.host.spec_entry()},
            "services": {"web": {
                "version": self.version, "artifact": self.artifact, "port": PORT,
                "args": ["--host", "{address}", "--port", "{port}"],   # its own address: hosts share the network
                "keep_releases": 1, "restart": {"policy": "on-failure", "delay_s": 1},
                "health": {"http": "http://{address}:{port}/health", "timeout_s": 20, "interval_s": 0.2}}}},
            sort_keys=False))
        return recon(*args, "-f", str(spec), "--state", str(self.dir / "state"), cwd=self.dir, check=check)

    def get(self, path: str) -> str:
        return _exec(self.host, f"curl -s -m 3 http://{self.host.address}:{PORT}{path}")


OBSERVE = """
import json, sys
from reconciler import pipeline
run = pipeline.prepare([sys.argv[1]], sys.argv[2])
o = pipeline.observe(run)["node1"]
d = run.desired["node1"]["web"]
print(json.dumps({"commands": o.commands, "observed": [o.services["web"].binary_sha, d.sha256]}))
"""


def want_digest(version: str) -> str:
    return tree_digest(read_tree(standin_tree.archive_bytes(version), "web", standin_tree.ENTRYPOINT))


def _bad_archive(extra: tuple[str, str]) -> bytes:
    """The stand-in tree plus one malicious member: ('../x' | '/abs' , 'f') or (name, '->target')."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(standin_tree.archive_bytes("6.6.6")), mode="r:gz") as good, \
            tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for m in good.getmembers():
            tar.addfile(m, good.extractfile(m) if m.isreg() else None)
        name, what = extra
        info = tarfile.TarInfo(name)
        if what.startswith("->"):
            info.type, info.linkname = tarfile.SYMTYPE, what[2:]
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"pwn\n"))
    return raw.getvalue()


def test_an_archive_release_is_served_replaced_rolled_back_and_pruned(testhost: TestHost, tmp_path: Path) -> None:
    web = Web(tmp_path, testhost)
    web.use("1.0.0")
    res = web.run("apply", "--auto-approve", check=0)
    assert "1 created" in res.stdout, res.stdout
    # the data files are served from the release, a link inside the tree included
    assert web.get("/data/release.txt") == "release 1.0.0\n"
    assert web.get("/current.txt") == "release 1.0.0\n"
    assert json.loads(web.get("/health"))["root"] == f"{RELEASES}/1.0.0"
    unit = _exec(testhost, f"cat /etc/systemd/system/{UNIT}")
    assert f"ExecStart={RELEASES}/1.0.0/bin/standin-tree --host {testhost.address} --port {PORT}" in unit
    listing = _exec(testhost, f"cd {RELEASES}/1.0.0 && find . | sort").split()
    assert listing == [".", "./VERSION", "./bin", "./bin/standin-tree", "./lib", "./lib/serve.py",
                       "./provisioning-web.service", "./web.toml", "./www", "./www/current.txt", "./www/data",
                       "./www/data/release.txt", "./www/index.html"]
    assert _exec(testhost, f"stat -c '%U %a' {RELEASES}/1.0.0/bin/standin-tree").split() == ["root", "755"]
    web.run("plan", "--detailed-exitcode", check=0)
    # observed in the one observation command, as the tree digest the controller computes from the archive
    probe = subprocess.run([sys.executable, "-c", OBSERVE, str(tmp_path / "spec.yaml"), str(tmp_path / "state")],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path, check=True)
    assert json.loads(probe.stdout) == {"commands": 1, "observed": [want_digest("1.0.0")] * 2}, probe.stdout

    # a file of the tree changed by hand: the tree digest differs, planned and applied as a replace
    _exec(testhost, f"echo tampered > {RELEASES}/1.0.0/www/data/release.txt")
    res = web.run("plan", "--detailed-exitcode", "--format", "json", check=2)
    change = json.loads(res.stdout)["changes"][0]
    assert change["action"] == "replace", change
    web.run("apply", "--auto-approve", check=0)
    assert web.get("/data/release.txt") == "release 1.0.0\n"
    web.run("plan", "--detailed-exitcode", check=0)

    # the archive bumped: a replace, the new tree served from its own release
    web.use("1.0.1")
    res = web.run("plan", "--detailed-exitcode", "--format", "json", check=2)
    assert json.loads(res.stdout)["changes"][0]["action"] == "replace"
    res = web.run("apply", "--auto-approve", check=0)
    assert "1 replaced" in res.stdout, res.stdout
    assert web.get("/data/release.txt") == "release 1.0.1\n"
    assert "/releases/1.0.1/" in show(testhost, UNIT, "ExecStart")["ExecStart"]

    # rollback: the old tree back, health-gated, and the host is observed as that tree
    res = web.run("rollback", "web", check=0)
    assert web.get("/data/release.txt") == "release 1.0.0\n", res.stdout
    state = json.loads((tmp_path / "state" / "recon.state.json").read_text())
    rec = state["hosts"]["node1"]["web"]
    assert (rec["version"], rec["sha256"]) == ("1.0.0", want_digest("1.0.0"))

    # pruning: keep_releases 1, plus the running and the previous release
    for version in ("1.0.1", "1.0.2", "1.0.3"):
        web.use(version, url=version == "1.0.2")     # an archive from a URL goes the same way
        web.run("apply", "--auto-approve", check=0)
    assert web.get("/data/release.txt") == "release 1.0.3\n"
    assert _exec(testhost, f"ls {RELEASES}").split() == ["1.0.2", "1.0.3"]
    web.run("plan", "--detailed-exitcode", check=0)


def test_malicious_archives_are_refused_with_nothing_touched(testhost: TestHost, tmp_path: Path) -> None:
    web = Web(tmp_path, testhost)
    web.use("1.0.0")
    web.run("apply", "--auto-approve", check=0)
    before = _written(testhost)
    pid = show(testhost, UNIT, "MainPID")["MainPID"]
    for extra, why in ((("../escape", "f"), "absolute path or `..`"), (("/etc/recon-pwned", "f"), "absolute path"),
                       (("www/out", "->../../../../etc"), "leads out of the release"),
                       (("www/abs", "->/etc/passwd"), "leads out of the release")):
        for url in (False, True):          # a path is checked by the spec's validation, a URL when it is read
            web.use("6.6.6", _bad_archive(extra), url=url)
            res = web.run("apply", "--auto-approve", check=1)
            assert why in res.stderr and repr(extra[0]) in res.stderr, res.stderr
            assert "Traceback" not in res.stderr
    assert _written(testhost) == before
    assert show(testhost, UNIT, "MainPID")["MainPID"] == pid
    assert web.get("/data/release.txt") == "release 1.0.0\n"
