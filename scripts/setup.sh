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
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
if [ "${CI:-}" = true ] || [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends systemd-container openssh-server openssh-client curl strace postgresql \
        python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
.venv/bin/python -m reconciler.standin.build --out artifacts >/dev/null
