"""Archive releases without hosts: each refusal of `archive.read_tree` (small tarballs built in tmp_path), the
tree digest computed the same by Python and by the host's shell (`TREESUM_FN`), the upload's unpack script, the
spec's validation of an archive (file, line, member), the desired service and the plan of a changed archive."""

from __future__ import annotations

import hashlib
import io
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

from reconciler import archive
from reconciler.archive import ArchiveError, Kind, read_tree, tree_digest
from reconciler.desired import desired_service, release_entries
from reconciler.errors import SpecError
from reconciler.hostscripts import unpack_script
from reconciler.observe import Target, build_script, parse_output
from reconciler.plan import Action, plan_service
from reconciler.spec import load_spec
from reconciler.spec.model import Host, build_service
from reconciler.standin import tree as standin_tree

SVC = "web"
RUN = b"#!/bin/sh\nexec true\n"


def tarball(members: list[tuple[str, str, object]], gz: bool = True) -> bytes:
    """A tar of (name, kind, payload): kind f (bytes), x (executable bytes), d, l (link target), h (hard link),
    c (char device), p (fifo)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind in ("x", "d") else 0o644
            if kind in ("f", "x"):
                data = payload if isinstance(payload, bytes) else b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE, "c": tarfile.CHRTYPE,
                         "p": tarfile.FIFOTYPE}[kind]
            if kind in ("l", "h"):
                info.linkname = str(payload)
            tar.addfile(info)
    return buf.getvalue()


GOOD = [("./", "d", None), ("bin", "d", None), ("bin/app", "x", RUN), ("www", "d", None),
        ("www/index.html", "f", b"<h1>hi</h1>\n"), ("www/latest", "l", "index.html"), ("docs", "l", "www")]


def refusals(members: list[tuple[str, str, object]], entrypoint: str = "bin/app") -> list[tuple[str, str]]:
    with pytest.raises(ArchiveError) as err:
        read_tree(tarball(members), SVC, entrypoint)
    return [(r.member, r.problem) for r in err.value.refusals]


def test_a_good_archive_reads_as_sorted_entries() -> None:
    entries = read_tree(tarball(GOOD), SVC, "bin/app")
    assert [(e.relpath, e.kind) for e in entries] == [
        ("bin", Kind.DIR), ("bin/app", Kind.FILE), ("docs", Kind.LINK), ("www", Kind.DIR),
        ("www/index.html", Kind.FILE), ("www/latest", Kind.LINK)]
    app = entries[1]
    assert (app.mode, app.sha256, app.data) == (0o755, hashlib.sha256(RUN).hexdigest(), RUN)


@pytest.mark.parametrize(("member", "kind", "payload", "why"), [
    ("/etc/passwd", "f", b"x", "absolute path or `..`"),
    ("../x", "f", b"x", "absolute path or `..`"),
    ("www/../../x", "f", b"x", "absolute path or `..`"),
    ("evil", "l", "/etc", "leads out of the release"),
    ("evil", "l", "../../etc", "leads out of the release"),
    ("www/evil", "l", "../..", "leads out of the release"),
    ("dev", "c", None, "a device"),
    ("pipe", "p", None, "a fifo"),
    ("www/index.html", "f", b"again", "is in the archive twice"),
    ("./www//index.html", "f", b"again", "is in the archive twice"),
    ("web.toml", "f", b"x", "recon's name at the top"),
    ("provisioning-web.service.prev", "f", b"x", "recon's name at the top"),
    ("line\nbreak", "f", b"x", "control character"),
    ("back\\slash", "f", b"x", "backslash"),
    ("copy", "h", "nowhere", "hard link"),
])
def test_each_bad_member_is_refused_by_name(member: str, kind: str, payload: object, why: str) -> None:
    got = refusals([*GOOD, (member, kind, payload)])
    assert len(got) == 1, got
    assert why in got[0][1]
    assert got[0][0] in (member, member.strip("./").replace("//", "/"))


def test_a_link_that_escapes_through_another_link_is_refused() -> None:
    # each link alone stays inside (lexically), but `up/..` is taken from where `up` leads: out of the release
    got = refusals([*GOOD, ("a", "d", None), ("a/up", "l", ".."), ("a/b", "d", None), ("a/b/out", "l", "../up/..")])
    assert got == [("a/b/out", "symbolic link to '../up/..' leads out of the release (or loops)")]


def test_a_member_written_through_a_link_is_refused() -> None:
    got = refusals([*GOOD, ("docs/new.txt", "f", b"x")])
    assert got == [("docs/new.txt", "it would be written through the symbolic link docs")]
    # also when the link comes after the member in the archive (the upload's tar is sorted: link first)
    got = refusals([*GOOD, ("late/new.txt", "f", b"x"), ("late", "l", "www")])
    assert got == [("late/new.txt", "it would be written through the symbolic link late")]
    got = refusals([*GOOD, ("www/index.html/x", "f", b"x")])
    assert got == [("www/index.html/x", "its parent www/index.html is not a directory in the archive")]


@pytest.mark.parametrize(("entrypoint", "why"), [
    ("bin/missing", "not in the archive"),
    ("www/index.html", "regular executable file (found mode 644)"),
    ("www", "regular executable file (found a directory)"),
    ("docs", "is a symbolic link"),
])
def test_the_entrypoint_must_be_a_regular_executable_member(entrypoint: str, why: str) -> None:
    got = refusals(GOOD, entrypoint)
    assert len(got) == 1 and got[0][0] == entrypoint and why in got[0][1], got


def test_every_refusal_is_reported_at_once_and_garbage_is_not_a_tar() -> None:
    got = refusals([*GOOD, ("/abs", "f", b""), ("../up", "f", b""), ("pipe", "p", None)])
    assert [m for m, _ in got] == ["/abs", "../up", "pipe"]
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        read_tree(b"not a tar at all" * 100, SVC, "bin/app")


def test_hard_links_become_copies() -> None:
    entries = read_tree(tarball([*GOOD, ("bin/again", "h", "bin/app")]), SVC, "bin/app")
    again = next(e for e in entries if e.relpath == "bin/again")
    assert (again.kind, again.data) == (Kind.FILE, RUN)


# --------------------------------------------------------------------------------------------- the digest
def _unpack(tmp_path: Path, entries: list[archive.Entry]) -> Path:
    rel = tmp_path / "releases" / "1.0.0"
    rel.mkdir(parents=True)
    (tmp_path / "up.tar").write_bytes(archive.pack(entries))
    subprocess.run(["tar", "-x", "-p", "-f", str(tmp_path / "up.tar"), "-C", str(rel)], check=True)
    return rel


def _treesum(rel: Path, shell: str = "/bin/sh") -> str:
    out = subprocess.run([shell, "-c", archive.TREESUM_FN + f'\ntreesum "$1" {SVC}', "sh", str(rel)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[0] if out.strip() else ""


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_the_host_computes_the_controllers_digest(tmp_path: Path, shell: str) -> None:
    entries = read_tree(tarball(GOOD), SVC, "bin/app")
    rel = _unpack(tmp_path, entries)
    want = tree_digest(entries)
    assert _treesum(rel, shell) == want
    # recon's own files beside the tree are not part of it
    for name in ("web.toml", "web.toml.prev", "provisioning-web.service", "provisioning-web.service.undo"):
        (rel / name).write_text("x")
    assert _treesum(rel, shell) == want
    # anything else is: a file added, a mode changed, a file's bytes, a link's target
    (rel / "www" / "extra").write_text("x")
    assert _treesum(rel, shell) != want
    (rel / "www" / "extra").unlink()
    (rel / "www" / "index.html").chmod(0o600)
    assert _treesum(rel, shell) != want
    (rel / "www" / "index.html").chmod(0o644)
    assert _treesum(rel, shell) == want
    (rel / "www" / "index.html").write_text("changed")
    assert _treesum(rel, shell) != want
    assert _treesum(tmp_path / "absent", shell) == ""


def test_the_standin_tree_is_deterministic_and_its_digest_matches_on_disk(tmp_path: Path) -> None:
    a, b = standin_tree.archive_bytes("1.0.0"), standin_tree.archive_bytes("1.0.0")
    assert a == b and a != standin_tree.archive_bytes("1.0.1")
    entries = read_tree(a, SVC, standin_tree.ENTRYPOINT)
    assert _treesum(_unpack(tmp_path, entries)) == tree_digest(entries)


def test_the_unpack_script_replaces_the_tree_and_keeps_recons_files(tmp_path: Path) -> None:
    d = _desired(tmp_path, GOOD)
    rel = Path(d.release_dir)
    rel.mkdir(parents=True)
    for name in ("stale.txt", ".hidden", "web.toml", "provisioning-web.service"):
        (rel / name).write_text("old")
    tar = tmp_path / "opt" / "up.tar"
    tar.write_bytes(archive.pack(release_entries(d, tarball(GOOD))))
    subprocess.run(["/bin/sh", "-c", unpack_script(d, shlex.quote(str(tar)))], check=True, capture_output=True)
    assert sorted(p.name for p in rel.iterdir()) == ["bin", "docs", "provisioning-web.service", "web.toml", "www"]
    assert (rel / "web.toml").read_text() == "old" and not tar.exists()
    assert _treesum(rel) == d.sha256


# --------------------------------------------------------------------------------------------- spec and plan
def _spec_file(tmp_path: Path, members: list[tuple[str, str, object]], entrypoint: str = "bin/app") -> Path:
    data = tarball(members)
    (tmp_path / "web.tar.gz").write_bytes(data)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""version: 1
hosts:
  node1: {{address: 10.0.0.5}}
services:
  web:
    version: "1.0.0"
    install_dir: {tmp_path}/opt
    artifact:
      path: web.tar.gz
      sha256: "{hashlib.sha256(data).hexdigest()}"
      entrypoint: {entrypoint}
    port: 8080
    args: ["--port", "{{port}}"]
""")
    return spec


def _desired(tmp_path: Path, members: list[tuple[str, str, object]]):
    spec = load_spec([str(_spec_file(tmp_path, members))])
    from reconciler.desired import archive_digest

    return desired_service(spec.services[SVC], spec.hosts["node1"], None, archive_digest)


def test_validation_names_the_file_line_spec_path_and_member(tmp_path: Path) -> None:
    spec = _spec_file(tmp_path, [*GOOD, ("../escape", "f", b"x"), ("out", "l", "/etc")])
    with pytest.raises(SpecError) as err:
        load_spec([str(spec)])
    text = str(err.value)
    assert "services.web.artifact.path" in text and f"{spec}:9:" in text
    assert "'../escape'" in text and "'out'" in text and "leads out of the release" in text


def test_validation_of_the_entrypoint_points_at_its_line(tmp_path: Path) -> None:
    spec = _spec_file(tmp_path, GOOD, entrypoint="www/index.html")
    with pytest.raises(SpecError) as err:
        load_spec([str(spec)])
    assert "services.web.artifact.entrypoint" in str(err.value) and f"{spec}:11:" in str(err.value)


def test_the_schema_refuses_an_entrypoint_outside_the_archive(tmp_path: Path) -> None:
    spec = _spec_file(tmp_path, GOOD, entrypoint="../bin/app")
    with pytest.raises(SpecError, match=r"services\.web\.artifact\.entrypoint"):
        load_spec([str(spec)])


def test_the_desired_archive_service_runs_its_entrypoint_and_is_its_tree_digest(tmp_path: Path) -> None:
    d = _desired(tmp_path, GOOD)
    assert d.binary_path == f"{tmp_path}/opt/web/releases/1.0.0/bin/app"
    assert f"ExecStart={d.binary_path} --port 8080" in d.unit_text
    assert d.sha256 == tree_digest(read_tree(tarball(GOOD), SVC, "bin/app"))
    assert d.archive_sha256 == hashlib.sha256((tmp_path / "web.tar.gz").read_bytes()).hexdigest()
    single = desired_service(build_service("web", {"version": "1", "artifact": {"path": "x", "sha256": "a" * 64}},
                                           ["node1"], None), Host("node1", "10.0.0.5"), None)
    entries = release_entries(single, RUN)
    assert [(e.relpath, e.mode, e.sha256) for e in entries] == [("web", 0o755, hashlib.sha256(RUN).hexdigest())]


def test_the_observation_reports_each_trees_digest(tmp_path: Path) -> None:
    """The one observation command, run by this machine's shell on an unpacked tree: current and wanted release."""
    d = _desired(tmp_path, GOOD)
    old = read_tree(tarball(GOOD[:3]), SVC, "bin/app")
    svc_dir = Path(d.service_dir)
    (svc_dir / "releases").mkdir(parents=True)
    _unpack(svc_dir, old)
    (svc_dir / "current").symlink_to("releases/1.0.0")
    new = svc_dir / "releases" / "2.0.0"
    new.mkdir()
    subprocess.run(["tar", "-x", "-p", "-C", str(new)], input=archive.pack(read_tree(tarball(GOOD), SVC, "bin/app")),
                   check=True)
    t = Target(SVC, str(svc_dir), str(tmp_path / "web.toml"), "provisioning-web.service", str(tmp_path / "web.env"),
               "2.0.0", tree=True)
    out = subprocess.run(["/bin/sh", "-c", build_script([t], "salt")], capture_output=True, text=True,
                         check=True).stdout
    o = parse_output("node1", out, [t]).services[SVC]
    assert (o.current, o.binary_sha, o.want_binary_sha) == ("1.0.0", tree_digest(old), d.sha256)


def test_a_changed_archive_plans_as_a_replace(tmp_path: Path) -> None:
    from reconciler.observe import ObservedService
    from reconciler.state import ServiceRecord

    d = _desired(tmp_path, GOOD)
    o = ObservedService(SVC, current="1.0.0", releases=["1.0.0"], binary_sha="e" * 64, config_text=d.config_text,
                        unit_text=d.unit_text, props={"ActiveState": "active", "MainPID": "1"})
    rec = ServiceRecord(version="1.0.0", sha256="e" * 64, config_sha=d.config_sha, unit_sha=d.unit_sha, env_hash=None,
                        config_text=d.config_text, unit_text=d.unit_text, service_dir=d.service_dir,
                        config_path=d.config_path, unit_name=d.unit_name, env_path=d.env_path)
    change = plan_service(d, o, rec, "salt")
    assert change is not None and change.action == Action.REPLACE
    assert [f.path for f in change.fields] == ["artifact.tree"]
    assert change.reason.startswith("release tree differs from the archive"), change.reason
    create = plan_service(d, ObservedService(SVC), None, "salt")
    assert create is not None and create.action == Action.CREATE
    assert next(f.after for f in create.fields if f.path == "artifact.sha256") == d.archive_sha256   # as written
    same = plan_service(d, ObservedService(**{**o.__dict__, "binary_sha": d.sha256}), rec, "salt")
    assert same is None or same.action != Action.REPLACE


def test_an_archive_read_from_a_url_is_checked_when_the_plan_reads_it(tmp_path: Path) -> None:
    """A `url:` archive is not read by validation; the plan reads it and refuses a bad member before any host."""
    from reconciler.desired import desired_state
    from reconciler.errors import ReconError

    spec_path = _spec_file(tmp_path, [*GOOD, ("../escape", "f", b"x")])
    text = spec_path.read_text().replace("path: web.tar.gz", f"url: {(tmp_path / 'web.tar.gz').as_uri()}")
    spec_path.write_text(text)
    spec = load_spec([str(spec_path)])
    from reconciler.desired import archive_digest

    with pytest.raises(ReconError) as err:
        desired_state(spec, None, archive_digest)
    assert "services.web.artifact" in str(err.value) and "member '../escape'" in str(err.value)
    assert "nothing was changed" in str(err.value)


def test_a_tree_costs_a_few_processes_and_other_services_none(tmp_path: Path) -> None:
    """Observing an archive release adds a bounded number of processes per tree (two trees here: the current
    and the wanted release), and nothing to a spec without archives."""
    import shutil

    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is needed for this test (scripts/setup.sh installs it)")
    d = _desired(tmp_path, GOOD)
    svc_dir = Path(d.service_dir)
    for version in ("1.0.0", "2.0.0"):
        rel = svc_dir / "releases" / version
        rel.mkdir(parents=True)
        subprocess.run(["tar", "-x", "-p", "-C", str(rel)], input=archive.pack(read_tree(tarball(GOOD), SVC,
                       "bin/app")), check=True)
    (svc_dir / "current").symlink_to("releases/1.0.0")
    base = Target(SVC, str(svc_dir), str(tmp_path / "web.toml"), "provisioning-web.service",
                  str(tmp_path / "web.env"), "2.0.0")
    counts = []
    for t in (base, Target(**{**base.__dict__, "tree": True})):
        log = tmp_path / "strace.log"
        subprocess.run([strace, "-f", "-qq", "-e", "trace=execve", "-o", str(log), "/bin/sh", "-c",
                        build_script([t], "salt")], capture_output=True, timeout=60, check=True)
        # processes started (find's -exec tries each PATH directory: only the execve that worked counts)
        counts.append(sum(1 for line in log.read_text().splitlines() if "execve" in line and line.endswith("= 0")))
    assert counts[0] < counts[1] <= counts[0] + 2 * 5, counts   # find ×2, sha256sum ×2, sort per tree


def test_parent_directories_the_archive_does_not_list_are_part_of_the_tree(tmp_path: Path) -> None:
    """`tar czf x.tgz bin/app www/a/b.html` lists no directories; tar makes them on the host, so they are in the
    host's digest: the controller adds them (0755) and the upload's tar carries them."""
    entries = read_tree(tarball([("bin/app", "x", RUN), ("www/a/b.html", "f", b"x")]), SVC, "bin/app")
    assert [(e.relpath, e.kind, e.mode) for e in entries if e.kind == Kind.DIR] == [
        ("bin", Kind.DIR, 0o755), ("www", Kind.DIR, 0o755), ("www/a", Kind.DIR, 0o755)]
    assert _treesum(_unpack(tmp_path, entries)) == tree_digest(entries)


def test_the_switch_refuses_a_tree_that_is_not_the_desired_one(tmp_path: Path) -> None:
    """The check `operations.place_script` runs before switching: the tree digest on the host against the
    desired one."""
    from reconciler.hostscripts import artifact_check

    d = _desired(tmp_path, GOOD)
    rel = Path(d.release_dir)
    rel.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-p", "-C", str(rel)], input=archive.pack(release_entries(d, tarball(GOOD))),
                   check=True)
    check = archive.TREESUM_FN + "\n" + artifact_check(d)
    assert subprocess.run(["/bin/sh", "-c", check]).returncode == 0
    (rel / "www" / "index.html").write_text("tampered")
    assert subprocess.run(["/bin/sh", "-c", check]).returncode != 0


def test_a_failed_unpack_leaves_the_release_as_it_was(tmp_path: Path) -> None:
    """The same version placed again (another archive, or a tree changed on the host) is the live release: an
    upload that cannot be unpacked must not leave it half removed."""
    d = _desired(tmp_path, GOOD)
    rel = Path(d.release_dir)
    rel.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-p", "-C", str(rel)], input=archive.pack(release_entries(d, tarball(GOOD))),
                   check=True)
    (rel / "web.toml").write_text("config")
    before = sorted(str(p.relative_to(rel)) for p in rel.rglob("*"))
    tar = tmp_path / "opt" / "up.tar"
    tar.write_bytes(b"this is not a tar" * 64)
    res = subprocess.run(["/bin/sh", "-c", unpack_script(d, shlex.quote(str(tar)))], capture_output=True, text=True)
    assert res.returncode != 0
    assert sorted(str(p.relative_to(rel)) for p in rel.rglob("*")) == before
    assert _treesum(rel) == d.sha256 and not tar.exists()
    assert sorted(p.name for p in rel.parent.iterdir()) == ["1.0.0"]     # no staging left behind
