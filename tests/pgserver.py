"""A real PostgreSQL server for tests: Debian's postgresql 15 binaries, `initdb` + `pg_ctl` in a temporary
directory on a free loopback port, run as the `postgres` user when the tests run as root (initdb refuses
root). A role `recon` with a password (scram) connects over TCP; `PGPASSWORD` carries it, so URLs never do."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

BIN = Path(os.environ.get("RECON_PG_BIN", "/usr/lib/postgresql/15/bin"))
PASSWORD = "pg-canary-Pw-4711"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    dir: Path
    port: int
    socket_dir: Path

    def _as_owner(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def psql(self, sql: str, db: str = "postgres") -> str:
        res = self._as_owner(str(BIN / "psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-d", db,
                             "-v", "ON_ERROR_STOP=1", "-At", "-c", sql)
        return res.stdout

    def url(self, db: str, password: bool = False) -> str:
        user = f"recon:{PASSWORD}" if password else "recon"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name} OWNER recon")
        return name

    def dump(self, db: str) -> str:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        res = subprocess.run([str(BIN / "pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "recon", db],
                             capture_output=True, text=True, env=env, timeout=120, check=True)
        return res.stdout

    def stop(self) -> None:
        self._as_owner(str(BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_server() -> PgServer:
    base = Path(tempfile.mkdtemp(prefix="recon-pg-"))
    os.chmod(base, 0o755)
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    port = _free_port()
    srv = PgServer(base, port, sock)
    srv._as_owner(str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
    res = srv._as_owner(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60",
                        "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
                        check=False)
    if res.returncode != 0:
        log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {res.stdout}{res.stderr}\n{log}")
    srv.psql(f"CREATE ROLE recon LOGIN CREATEDB PASSWORD '{PASSWORD}'")
    return srv
