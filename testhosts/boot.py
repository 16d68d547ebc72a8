"""Boot, reach and halt test hosts: systemd-nspawn containers with systemd as PID 1 and sshd on NET.I."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testhosts.model import (
    DEFAULT_DIR,
    DEFAULT_NET,
    DEFAULT_PREFIX,
    DEFAULT_RW_CONTROLLERS,
    DEFAULT_TMPFS_SIZE,
    IN_PATH,
    INSTALL_HINT,
    MAX_INDEX,
    SSH_PORT,
    SYSTEMD,
    TestHost,
    TestHostError,
    hosts_spec,
)
from testhosts.proc import (
    _children,
    _own_cgroups,
    _port_free,
    _port_open,
    _proc_cmdline,
    _proc_comm,
    _proc_ppid,
    _proc_state,
    _raise_sysctls,
    _read_int,
    _remove_cgroup,
    _run,
    _tail,
)

# Units a test host does not need (or that misbehave in a container). The machine's own enablements
# (/etc/systemd/system/*.wants, *.requires) are dropped anyway; these are pulled in statically.
MASKED_UNITS = (
    "systemd-firstboot.service",
    "systemd-ask-password-console.path",
    "systemd-ask-password-wall.path",
    "ssh.socket",
    "getty@tty1.service",
    "console-getty.service",
    "systemd-timesyncd.service",
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-resolved.service",
    "systemd-pstore.service",
    "systemd-tmpfiles-clean.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "man-db.timer",
    "fstrim.timer",
    "dpkg-db-backup.timer",
    "logrotate.timer",
    "postgresql.service",
    "docker.service",
    "docker.socket",
    "containerd.service",
    "cron.service",
    "exim4.service",
)

SSHD_CONFIG = """\
# written by testhosts: this test host's sshd, self-contained (no Include)
ListenAddress {address}:{port}
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
X11Forwarding no
PrintMotd no
PrintLastLog no
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
MaxStartups 200:30:400
MaxSessions 100
# no sntrup761 (OpenSSH's default kex): it costs ~85 ms of client CPU per connection on these VMs
KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,\
ecdh-sha2-nistp521,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group14-sha256
"""

# Runs as: unshare -m --propagation private -- /bin/sh -c LAUNCHER launcher NAME BASE
# (env: TMPFS_SIZE, CGDIRS, REMOUNT). Mounts stay in this private namespace; it dies with nspawn.
LAUNCHER = r"""
set -eu
NAME=$1 BASE=$2
R=$BASE/root
case "$(stat -f -c %T /run/systemd/nspawn)" in
    tmpfs|ramfs) ;;
    *) mount -t tmpfs -o mode=755 recon-testhosts-run /run/systemd/nspawn ;;
esac
mount -t tmpfs -o "size=$TMPFS_SIZE,mode=755" "$NAME-rw" "$BASE/rw"
mkdir -p "$BASE/rw/upper" "$BASE/rw/work"
mount -t overlay "$NAME-root" -o "lowerdir=/,upperdir=$BASE/rw/upper,workdir=$BASE/rw/work" "$R"
# this machine's state that must not leak into a test host
rm -rf "$R/root/.ssh" "$R/root/.bash_profile" "$R/root/.bash_login" "$R/etc/ssh/sshd_config.d" \
       "$R/etc/systemd/system/ssh.service"
for d in "$R"/etc/systemd/system/*.wants "$R"/etc/systemd/system/*.requires; do
    if [ -d "$d" ]; then rm -rf "$d"; fi
done
cp -a --remove-destination "$BASE/seed/." "$R/"
for d in $CGDIRS; do mkdir -p "$d"; echo $$ > "$d/cgroup.procs"; done
echo "testhosts: launching $NAME"
exec systemd-nspawn --quiet --register=no --keep-unit -D "$R" -M "$NAME" \
    --console=read-only --kill-signal=SIGRTMIN+3 \
    /bin/sh -c "$REMOUNT exec /lib/systemd/systemd"
"""


class TestHosts:
    """A set of test hosts sharing one directory (client key, known_hosts, per-host state).

    Host I is container ``{prefix}-hI`` at ``{net}.I``. Arguments left None take $TESTHOSTS_DIR,
    $TESTHOSTS_NET, $TESTHOSTS_PREFIX, $TESTHOSTS_RW_CONTROLLERS, $TESTHOSTS_TMPFS_SIZE, else the
    defaults (/tmp/recon-testhosts, 127.0.10, rtest, memory pids cpu cpuacct, 2G). Use one directory
    per (net, prefix). Safe to use from several threads and processes (a lock file serialises
    up/down).
    """

    __test__ = False

    def __init__(
        self,
        dir: str | Path | None = None,
        net: str | None = None,
        prefix: str | None = None,
        *,
        rw_controllers: Sequence[str] | None = None,
        tmpfs_size: str | None = None,
        boot_timeout: float = 120.0,
    ) -> None:
        env = os.environ
        self.dir = Path(dir if dir is not None else env.get("TESTHOSTS_DIR") or DEFAULT_DIR).absolute()
        self.net = net if net is not None else env.get("TESTHOSTS_NET") or DEFAULT_NET
        self.prefix = prefix if prefix is not None else env.get("TESTHOSTS_PREFIX") or DEFAULT_PREFIX
        if rw_controllers is None:
            rw_controllers = (env.get("TESTHOSTS_RW_CONTROLLERS") or " ".join(DEFAULT_RW_CONTROLLERS)).split()
        self.rw_controllers = tuple(rw_controllers)
        self.tmpfs_size = tmpfs_size or env.get("TESTHOSTS_TMPFS_SIZE") or DEFAULT_TMPFS_SIZE
        self.boot_timeout = boot_timeout
        self.lock_timeout = boot_timeout + 60
        octets = self.net.split(".")
        if len(octets) != 3 or octets[0] != "127" or not all(o.isdigit() and int(o) <= 255 for o in octets):
            raise TestHostError(f"net {self.net!r}: want the first three octets of a loopback address, e.g. 127.0.10")
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,40}", self.prefix):
            raise TestHostError(f"prefix {self.prefix!r}: want [a-z][a-z0-9-]*, at most 41 characters")
        self.key = self.dir / "id_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.hosts_dir = self.dir / "hosts"
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._rlock = threading.RLock()
        self._procs_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_depth = 0

    # -- naming

    def name(self, i: int) -> str:
        return f"{self.prefix}-h{self._check_index(i)}"

    def address(self, i: int) -> str:
        return f"{self.net}.{self._check_index(i)}"

    def base(self, i: int) -> Path:
        return self.hosts_dir / f"h{self._check_index(i)}"

    @staticmethod
    def _check_index(i: int) -> int:
        if not isinstance(i, int) or not 1 <= i <= MAX_INDEX:
            raise TestHostError(f"host index {i!r}: want 1..{MAX_INDEX}")
        return i

    def _host(self, i: int, leader: int) -> TestHost:
        return TestHost(i, self.name(i), self.address(i), leader, self.key, self.known_hosts)

    # -- state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._rlock:
            if self._lock_depth == 0:
                self.dir.mkdir(parents=True, exist_ok=True)
                self.dir.chmod(0o700)
                fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
                deadline = time.monotonic() + self.lock_timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                            os.close(fd)
                            raise TestHostError(
                                f"{self.dir} is locked by another up/down (pid {holder}) for more than "
                                f"{self.lock_timeout:.0f} s; if that process hangs, end it"
                            ) from None
                        time.sleep(0.1)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def _nspawn_pid(self, i: int) -> int | None:
        """PID of host i's launcher/nspawn when it is alive (not a zombie), else None."""
        pid = _read_int(self.base(i) / "nspawn.pid")
        if pid is None:
            return None
        proc = self._procs.get(i)
        if proc is not None and proc.pid == pid and proc.poll() is not None:
            return None
        if _proc_state(pid) in (None, "Z", "X") or self.name(i) not in _proc_cmdline(pid):
            return None
        return pid

    def _leader_pid(self, i: int, nspawn_pid: int) -> int | None:
        """PID (host view) of host i's systemd, the container's PID 1."""
        lp = _read_int(self.base(i) / "leader.pid")
        if lp is not None and _proc_ppid(lp) == nspawn_pid and _proc_comm(lp) == "systemd":
            return lp
        for c in _children(nspawn_pid):
            if _proc_comm(c) == "systemd":
                return c
        return None

    def _indices_on_disk(self) -> list[int]:
        if not self.hosts_dir.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in self.hosts_dir.iterdir() if re.fullmatch(r"h\d+", p.name))

    def is_running(self, i: int) -> bool:
        np = self._nspawn_pid(i)
        return np is not None and (self.base(i) / "ready").exists() and self._leader_pid(i, np) is not None

    def running(self) -> list[TestHost]:
        """The running (booted and ready) hosts, by index."""
        res = []
        for i in self._indices_on_disk():
            np = self._nspawn_pid(i)
            if np is None or not (self.base(i) / "ready").exists():
                continue
            lp = self._leader_pid(i, np)
            if lp is not None:
                res.append(self._host(i, lp))
        return res

    def host(self, i: int) -> TestHost:
        """Running host i (TestHostError when it is not running)."""
        np = self._nspawn_pid(i)
        lp = self._leader_pid(i, np) if np is not None else None
        if lp is None or not (self.base(i) / "ready").exists():
            raise TestHostError(f"test host {i} ({self.address(i)}) is not running in {self.dir}")
        return self._host(i, lp)

    def boot_ms(self, i: int) -> int | None:
        return _read_int(self.base(i) / "boot_ms")

    def memory(self, i: int) -> int:
        """Bytes charged to host i's memory cgroup (its processes, page cache and tmpfs layer)."""
        for d in self._cgdirs(i):
            if d.parts[:5] == ("/", "sys", "fs", "cgroup", "memory"):
                return _read_int(d / "memory.usage_in_bytes") or 0
        return 0

    def console_log(self, i: int, lines: int = 40) -> str:
        return _tail(self.base(i) / "console.log", lines)

    def _cgdirs(self, i: int) -> list[Path]:
        try:
            return [Path(p) for p in (self.base(i) / "cgdirs").read_text().split()]
        except OSError:
            return []

    # -- preflight

    def check_environment(self) -> None:
        """Raise TestHostError (with the fix) when this machine cannot boot test hosts."""
        problems = []
        if os.geteuid() != 0:
            problems.append("test hosts need root (systemd-nspawn, mounts, cgroups): run as root")
        missing = [p for p in ("systemd-nspawn", "ssh", "ssh-keygen") if shutil.which(p) is None]
        if not os.access("/usr/sbin/sshd", os.X_OK):
            missing.append("sshd")
        if missing:
            problems.append(f"missing {', '.join(missing)}: {INSTALL_HINT}")
        for tool in ("unshare", "nsenter"):
            if shutil.which(tool) is None:
                problems.append(f"missing {tool}: apt-get install -y util-linux")
        if not os.access(SYSTEMD, os.X_OK):
            problems.append(f"missing {SYSTEMD}: apt-get install -y systemd")
        if not Path("/sys/fs/cgroup/memory/cgroup.procs").exists():
            problems.append(
                "expects v1/hybrid cgroups (a v1 memory hierarchy at /sys/fs/cgroup/memory); this machine "
                "runs unified cgroup v2 only (boot it with systemd.unified_cgroup_hierarchy=0)"
            )
        if problems:
            raise TestHostError("cannot boot test hosts:\n  " + "\n  ".join(problems))

    # -- up

    def up(self, indices: Iterable[int]) -> list[TestHost]:
        """Boot hosts `indices` in parallel (running ones are kept); return them all, in order.

        Raises TestHostError, with each failed host's error and console log, when a host does not
        boot or is not reachable over SSH; hosts this call booted are then halted again.
        """
        wanted = list(dict.fromkeys(self._check_index(i) for i in indices))
        if not wanted:
            return []
        self.check_environment()
        _raise_sysctls()
        with self._locked():
            self._ensure_key()
            self.hosts_dir.mkdir(parents=True, exist_ok=True)
            to_boot = [i for i in wanted if not self.is_running(i)]
            stale = [i for i in to_boot if self.base(i).exists()]
            if stale:
                self._halt_many(stale, graceful=False)
            busy = [self.address(i) for i in to_boot if not _port_free(self.address(i), SSH_PORT)]
            if busy:
                raise TestHostError(
                    f"port {SSH_PORT} is already in use on {', '.join(busy)} (another process listens "
                    "there, or on 0.0.0.0/[::]): a test host's sshd needs its address:22; make this "
                    "machine's sshd listen on specific addresses, or choose another TESTHOSTS_NET"
                )
            errors: dict[int, str] = {}
            if to_boot:
                with ThreadPoolExecutor(max_workers=min(32, len(to_boot))) as pool:
                    results = dict(zip(to_boot, pool.map(self._boot_one, to_boot), strict=True))
                errors = {i: err for i, err in results.items() if err}
            self._write_known_hosts()
            if errors:
                msg = "\n\n".join(f"test host {i} ({self.address(i)}): {errors[i]}" for i in sorted(errors))
                self._halt_many(to_boot, graceful=False)
                self._write_known_hosts()
                raise TestHostError(f"{len(errors)} of {len(to_boot)} test host(s) failed to boot:\n{msg}")
            return [self.host(i) for i in wanted]

    def _ensure_key(self) -> None:
        if not self.key.exists() or not self.key.with_suffix(".pub").exists():
            for p in (self.key, self.key.with_suffix(".pub")):
                p.unlink(missing_ok=True)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "recon-testhosts", "-f", str(self.key)],
                check=True,
                capture_output=True,
            )

    def _seed(self, i: int, seed: Path) -> None:
        """Files copied over the host's root (the overlay's merged view) before it boots."""
        name, address = self.name(i), self.address(i)
        dirs = {
            "etc": 0o755,
            "etc/ssh": 0o755,
            "etc/systemd": 0o755,
            "etc/systemd/system": 0o755,
            "etc/systemd/system/multi-user.target.wants": 0o755,
            "root": 0o700,
            "root/.ssh": 0o700,
        }
        for d, mode in dirs.items():
            (seed / d).mkdir(parents=True, exist_ok=True)
            (seed / d).chmod(mode)

        def write(rel: str, text: str, mode: int) -> None:
            p = seed / rel
            p.write_text(text)
            p.chmod(mode)

        write("etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
        write("etc/hostname", name + "\n", 0o644)
        write("etc/ssh/sshd_config", SSHD_CONFIG.format(address=address, port=SSH_PORT), 0o644)
        hostkey = seed / "etc/ssh/ssh_host_ed25519_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(hostkey)],
            check=True,
            capture_output=True,
        )
        hostkey.chmod(0o600)
        hostkey.with_suffix(".pub").chmod(0o644)
        units = seed / "etc/systemd/system"
        for u in MASKED_UNITS:
            (units / u).symlink_to("/dev/null")
        (units / "multi-user.target.wants/ssh.service").symlink_to("/lib/systemd/system/ssh.service")
        write("root/.ssh/authorized_keys", self.key.with_suffix(".pub").read_text(), 0o600)
        write("root/.bashrc", "", 0o644)
        write("root/.profile", "", 0o644)

    def _cgroup_dirs_for(self, name: str) -> list[str]:
        own = _own_cgroups()
        res: list[str] = []
        seen: set[str] = set()
        for h in (*self.rw_controllers, "systemd", "unified"):
            key = "name=systemd" if h == "systemd" else h
            mount = Path("/sys/fs/cgroup", h)
            if key not in own or not mount.is_dir():
                continue
            real = os.path.realpath(mount)
            if real in seen:
                continue
            seen.add(real)
            res.append(f"{real}{own[key].rstrip('/')}/{name}")
        return res

    def _boot_one(self, i: int) -> str:
        """Launch host i and wait until it is ready; '' on success, else the error with its log."""
        t0 = time.monotonic()
        base, name, address = self.base(i), self.name(i), self.address(i)
        try:
            if base.exists():
                shutil.rmtree(base)
            for d in ("rw", "root", "seed"):
                (base / d).mkdir(parents=True)
            Path("/run/systemd/nspawn").mkdir(parents=True, exist_ok=True)
            self._seed(i, base / "seed")
            cgdirs = self._cgroup_dirs_for(name)
            (base / "cgdirs").write_text("\n".join(cgdirs) + "\n")
            remount = "".join(
                f"mount -o remount,bind,rw /sys/fs/cgroup/{c}; "
                for c in self.rw_controllers
                if Path("/sys/fs/cgroup", c).exists()
            )
            env = {
                "PATH": IN_PATH,
                "LANG": "C.UTF-8",
                "TMPFS_SIZE": self.tmpfs_size,
                "CGDIRS": " ".join(cgdirs),
                "REMOUNT": remount,
            }
            with open(base / "console.log", "wb") as log:
                proc = subprocess.Popen(
                    [
                        "unshare",
                        "-m",
                        "--propagation",
                        "private",
                        "--",
                        "/bin/sh",
                        "-c",
                        LAUNCHER,
                        "testhosts-launcher",
                        name,
                        str(base),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            with self._procs_lock:  # not _rlock: up() holds that one while this runs in a worker thread
                self._procs[i] = proc
            (base / "nspawn.pid").write_text(f"{proc.pid}\n")
        except (OSError, subprocess.CalledProcessError) as e:
            return f"cannot launch: {e}"

        def fail(what: str) -> str:
            log = self.dir / f"h{i}.failed-console.log"  # kept: the host's directory goes at cleanup
            with contextlib.suppress(OSError):
                shutil.copyfile(base / "console.log", log)
            return f"{what}\n--- console log ({log}), last lines:\n{_tail(log)}"

        deadline = t0 + self.boot_timeout
        leader = None
        while True:
            if proc.poll() is not None:
                return fail(f"container exited with status {proc.returncode} while booting")
            leader = self._leader_pid(i, proc.pid)
            if leader is not None and Path(f"/proc/{leader}/root/run/systemd/private").is_socket():
                break
            if time.monotonic() > deadline:
                return fail(f"systemd did not start within {self.boot_timeout:.0f} s")
            time.sleep(0.05)
        (base / "leader.pid").write_text(f"{leader}\n")
        try:
            r = subprocess.run(
                self._nsenter(leader, ["systemctl", "is-system-running", "--wait"]),
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            state = r.stdout.strip()
        except subprocess.TimeoutExpired:
            state = "timeout"
        if state not in ("running", "degraded"):
            failed = subprocess.run(
                self._nsenter(leader, ["systemctl", "--failed", "--no-legend", "--no-pager"]),
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return fail(f"boot state {state!r}; failed units:\n{failed.strip() or '(none)'}")
        (base / "state").write_text(state + "\n")
        while not _port_open(address, SSH_PORT):
            if proc.poll() is not None:
                return fail(f"container exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                status = subprocess.run(
                    self._nsenter(leader, ["systemctl", "status", "--no-pager", "-n", "20", "ssh.service"]),
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                return fail(f"sshd is not listening on {address}:{SSH_PORT}:\n{status}")
            time.sleep(0.05)
        # end to end: a real ssh command, strict host-key checking against this host's key alone
        own_known = base / "known_hosts"
        own_known.write_text(self._known_hosts_line(i))
        try:
            r = self.ssh(i, "true", timeout=max(5.0, deadline - time.monotonic()), known_hosts=own_known)
            if r.returncode != 0:
                return fail(f"ssh root@{address} true failed ({r.returncode}): {r.stderr.strip()}")
        except subprocess.TimeoutExpired:
            return fail(f"ssh root@{address} true timed out")
        (base / "boot_ms").write_text(f"{round((time.monotonic() - t0) * 1000)}\n")
        (base / "ready").write_text("")
        return ""

    def _known_hosts_line(self, i: int) -> str:
        keytype, keydata = (self.base(i) / "seed/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
        return f"{self.address(i)} {keytype} {keydata}\n"

    def _write_known_hosts(self) -> None:
        lines = []
        for i in self._indices_on_disk():
            pub = self.base(i) / "seed/etc/ssh/ssh_host_ed25519_key.pub"
            if self._nspawn_pid(i) is None or not pub.exists():
                continue
            lines.append(self._known_hosts_line(i))
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.known_hosts.with_name(f".known_hosts.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text("".join(lines))
        tmp.chmod(0o644)
        os.replace(tmp, self.known_hosts)

    # -- down

    def down(self, indices: Iterable[int] | None = None, *, graceful: bool = False) -> None:
        """Halt hosts `indices` (default: all, plus leftovers of a crashed run), in parallel.

        Removes their cgroups and directories and rewrites known_hosts. By default a host is stopped
        by killing its systemd (the kernel then kills the whole container; its writes are thrown away
        anyway), ~0.1 s; graceful=True powers it off cleanly (nspawn's SIGRTMIN+3), ~0.2 s. The halt
        takes longer seen from elsewhere when this process is not the launcher's parent: then PID 1 of
        this machine reaps the exited nspawn, which can take a second or so (zombies count as halted).
        """
        if not self.dir.exists():
            errors = self._remove_stale_cgroups() if indices is None else []
            if errors:
                raise TestHostError("halting test hosts:\n  " + "\n  ".join(errors))
            return
        with self._locked():
            if indices is None:
                todo = self._indices_on_disk()
            else:
                wanted = dict.fromkeys(self._check_index(i) for i in indices)
                todo = [i for i in wanted if self.base(i).exists()]
            errors = self._halt_many(todo, graceful=graceful)
            if indices is None:
                errors += self._remove_stale_cgroups()
                with contextlib.suppress(OSError):
                    self.hosts_dir.rmdir()
            self._write_known_hosts()
            if errors:
                raise TestHostError("halting test hosts:\n  " + "\n  ".join(errors))

    def _halt_many(self, indices: Sequence[int], *, graceful: bool) -> list[str]:
        if not indices:
            return []
        with ThreadPoolExecutor(max_workers=min(32, len(indices))) as pool:
            return [e for e in pool.map(lambda i: self._halt_one(i, graceful), indices) if e]

    def _wait_gone(self, i: int, pid: int, timeout: float) -> bool:
        proc = self._procs.get(i)
        if proc is not None and proc.pid == pid:
            try:
                proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while _proc_state(pid) not in (None, "Z", "X"):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _halt_one(self, i: int, graceful: bool) -> str:
        base = self.base(i)
        np = self._nspawn_pid(i)
        error = ""
        if np is not None:
            leader = self._leader_pid(i, np)
            if graceful and leader is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(np, signal.SIGTERM)  # nspawn -> SIGRTMIN+3 to systemd -> clean poweroff
                if not self._wait_gone(i, np, 20):
                    error = f"host {i}: no clean halt within 20 s, killed"
            if _proc_state(np) not in (None, "Z", "X"):
                leader = self._leader_pid(i, np)
                with contextlib.suppress(ProcessLookupError):
                    # PID 1 of the container dies -> the kernel kills the rest; nspawn then exits
                    os.kill(leader if leader is not None else np, signal.SIGKILL)
                if not self._wait_gone(i, np, 10):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(np, signal.SIGKILL)
                    if not self._wait_gone(i, np, 5):
                        return f"host {i}: nspawn (pid {np}) does not exit"
        with self._procs_lock:
            proc = self._procs.pop(i, None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        try:
            for d in self._cgdirs(i):
                _remove_cgroup(d)
        except TestHostError as e:
            return f"host {i}: {e}"
        # the mounts lived in the launcher's private namespace and are gone with it; just in case:
        for mnt in (base / "root", base / "rw"):
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        return error

    def _remove_stale_cgroups(self) -> list[str]:
        """Remove cgroups named {prefix}-hN that no host directory accounts for (a crashed run)."""
        pat = re.compile(rf"{re.escape(self.prefix)}-h\d+")
        errors = []
        for h in (*self.rw_controllers, "systemd", "unified"):
            root = Path("/sys/fs/cgroup", h)
            if not root.is_dir():
                continue
            for dirpath, dirs, _files in os.walk(root):
                depth = len(Path(dirpath).relative_to(root).parts)
                for d in [d for d in dirs if pat.fullmatch(d)]:
                    dirs.remove(d)
                    try:
                        _remove_cgroup(Path(dirpath, d))
                    except TestHostError as e:
                        errors.append(str(e))
                if depth >= 4:
                    dirs.clear()
        return errors

    # -- run commands

    def ssh_argv(self, i: int, cmd: str | Sequence[str] = (), *, known_hosts: str | Path | None = None) -> list[str]:
        """The ssh command line for host i: root, the generated key, strict host keys, BatchMode.

        A sequence `cmd` is shell-quoted into one remote command; a string is run by the remote shell.
        """
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.key),
            "-p",
            str(SSH_PORT),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            f"root@{self.address(i)}",
        ]
        if isinstance(cmd, str):
            argv += ["--", cmd]
        elif cmd:
            argv += ["--", shlex.join(cmd)]
        return argv

    def ssh(
        self,
        i: int,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = 60,
        check: bool = False,
        input: str | None = None,
        known_hosts: str | Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` on host i over real SSH (strict host-key checking); output captured as text."""
        return _run(self.ssh_argv(i, cmd, known_hosts=known_hosts), timeout, check, input)

    @staticmethod
    def _nsenter(leader: int, argv: Sequence[str]) -> list[str]:
        return [
            "nsenter",
            "-t",
            str(leader),
            "-a",
            "--",
            "env",
            "-i",
            f"PATH={IN_PATH}",
            "HOME=/root",
            "TERM=dumb",
            "LANG=C.UTF-8",
            *argv,
        ]

    def exec_argv(self, i: int, cmd: str | Sequence[str]) -> list[str]:
        """The nsenter command line running `cmd` (a string: via /bin/sh -c) inside host i."""
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return self._nsenter(self.host(i).leader_pid, argv)

    def exec(
        self,
        i: int,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = 60,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside host i with nsenter (all its namespaces, a clean env), without SSH.

        The process is not under the host's systemd; to run under it and its limits use
        ``systemd-run --wait --pipe ...``.
        """
        return _run(self.exec_argv(i, cmd), timeout, check, input)

    def spec(self, indices: Iterable[int], names: Sequence[str] | None = None) -> dict[str, dict[str, object]]:
        """A recon spec `hosts:` mapping for running hosts `indices` (names default node1, node2, ...)."""
        return hosts_spec([self.host(i) for i in indices], names)

