"""The pyinfra equivalent of `recon apply` for one archive release (bench/archive_release.py).

    BENCH_HOSTS=… BENCH_KEY=… BENCH_KNOWN_HOSTS=… BENCH_ARCHIVE_DIR=DIR BENCH_ARCHIVE_MODE=untar|sync \
    .venv/bin/pyinfra -y bench/equivalent/inventory.py bench/equivalent/archive_deploy.py

DIR holds what recon would install (written by the benchmark): `release.json` (the paths), `tree.tar.gz` (the
archive), `tree/` (the same tree unpacked), `config.toml` and `unit.service`. Two ways a pyinfra user ships a tree:
`untar` uploads the archive and unpacks it with tar on the host; `sync` is `files.sync` of the unpacked directory
(one fact and one upload per file). Then the config and unit, daemon-reload, enable and restart. No health check.
BENCH_PYINFRA_NODELAY=1 sets TCP_NODELAY on the SSH socket, as in bench/equivalent/deploy.py.
"""

import json
import os
import socket
from pathlib import Path

from pyinfra import host
from pyinfra.operations import files, server, systemd

DIR = Path(os.environ["BENCH_ARCHIVE_DIR"])
MODE = os.environ.get("BENCH_ARCHIVE_MODE", "untar")
rel = json.loads((DIR / "release.json").read_text())

if os.environ.get("BENCH_PYINFRA_NODELAY") == "1":
    host.connector.client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

files.directory(name="release directory", path=rel["release_dir"], present=True, mode="755")
if MODE == "sync":
    files.sync(name="the tree", src=str(DIR / "tree"), dest=rel["release_dir"])
else:
    upload = rel["service_dir"] + "/upload.tar.gz"
    files.put(name="the archive", src=str(DIR / "tree.tar.gz"), dest=upload)
    server.shell(name="unpack", commands=[f"tar -xzf {upload} --no-same-owner -p -C {rel['release_dir']}",
                                          f"rm -f {upload}"])
files.put(name="config", src=str(DIR / "config.toml"), dest=rel["release_dir"] + "/web.toml", mode="640")
files.link(name="current", path=rel["service_dir"] + "/current", target=rel["release_dir"])
files.link(name="config link", path=rel["config_path"], target=rel["service_dir"] + "/current/web.toml")
files.put(name="unit", src=str(DIR / "unit.service"), dest=rel["unit_path"], mode="644")
systemd.service(name="start", service=rel["unit_name"], running=True, restarted=True, enabled=True,
                daemon_reload=True)
