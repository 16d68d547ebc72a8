"""The tree stand-in: a release that is a tree of files (an archive artifact), like the platform's mcp-server
(Nushell scripts) or control-center-ui (a web UI). `bin/standin-tree` (a shell entrypoint) runs `lib/serve.py`,
which serves the release's `www/` over HTTP, with `/health`. `archive_bytes` builds it as a gzip'd tar whose
bytes depend only on the version (fixed times, owners and order), so its sha256 can be pinned.
"""

from __future__ import annotations

import gzip
import io
import tarfile

ENTRYPOINT = "bin/standin-tree"
VERSIONS = ("1.0.0", "1.0.1")

_ENTRY = """#!/bin/sh
# The tree stand-in's entrypoint: serve this release's www/ (its path is in the command line).
here=$(cd "$(dirname "$0")/.." && pwd)
exec python3 "$here/lib/serve.py" --root "$here" "$@"
"""

_SERVE = '''"""Serve ROOT/www over HTTP on HOST:PORT (default 127.0.0.1:8080); /health answers the release's version."""
import argparse
import functools
import http.server
import json
import os

parser = argparse.ArgumentParser()
parser.add_argument("--root", required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8080)
args = parser.parse_args()
version = open(os.path.join(args.root, "VERSION")).read().strip()


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = json.dumps({"status": "ok", "version": version, "root": args.root}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *a):
        pass


handler = functools.partial(Handler, directory=os.path.join(args.root, "www"))
http.server.ThreadingHTTPServer((args.host, args.port), handler).serve_forever()
'''


def files(version: str) -> list[tuple[str, int, bytes | None, str]]:
    """(path, mode, bytes, link target) of the tree at `version`: directories have no bytes, links a target."""
    return [
        ("bin", 0o755, None, ""),
        (ENTRYPOINT, 0o755, _ENTRY.encode(), ""),
        ("lib", 0o755, None, ""),
        ("lib/serve.py", 0o644, _SERVE.encode(), ""),
        ("VERSION", 0o644, f"{version}\n".encode(), ""),
        ("www", 0o755, None, ""),
        ("www/index.html", 0o644, f"<html><body><h1>standin-tree {version}</h1></body></html>\n".encode(), ""),
        ("www/data", 0o755, None, ""),
        ("www/data/release.txt", 0o644, f"release {version}\n".encode(), ""),
        ("www/current.txt", 0o777, None, "data/release.txt"),
    ]


def archive_bytes(version: str) -> bytes:
    """The gzip'd tar of the tree at `version`, deterministic (mtime 0, root:root, this order, no gzip name)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, mode, data, target in files(version):
            info = tarfile.TarInfo("./" + path)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, 0, "root", "root"
            if target:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()
