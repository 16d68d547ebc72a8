#!/usr/bin/env bash
# Installs what recon, its demo and its tests need on a fresh Debian 12 machine (run as root):
# systemd-nspawn and sshd for the throwaway test hosts, curl for health checks, a venv with recon.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v strace >/dev/null 2>&1 || need+=(strace)
command -v logrotate >/dev/null 2>&1 || need+=(logrotate)
command -v promtool >/dev/null 2>&1 || need+=(promtool)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
if [ "${CI:-}" = true ] || [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends systemd-container openssh-server openssh-client curl strace \
        logrotate postgresql python3-venv >/dev/null
fi
# promtool (a test checks `recon metrics --format prometheus` with `promtool check metrics`): Debian 12 ships it
# in the prometheus package (19 MB download, 96 MB installed, with a server that its postinst would start);
# only the promtool binary (48 MB) is taken out of the package, so no Prometheus server is installed or run.
if ! command -v promtool >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    chmod 755 "$tmp"
    (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null && dpkg-deb --fsys-tarfile prometheus_*.deb \
        | tar -x ./usr/bin/promtool) && install -m 0755 "$tmp/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$tmp"
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
.venv/bin/python -m reconciler.standin.build --out artifacts >/dev/null
