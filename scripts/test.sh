#!/usr/bin/env bash
# The test suite: installs what it needs, then lint and every test. Tests marked `host` boot real
# systemd hosts with systemd-nspawn (root needed); they fail, never skip, when a host cannot boot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
