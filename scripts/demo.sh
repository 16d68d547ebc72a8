#!/usr/bin/env bash
# The recon demo: boot a throwaway local systemd host (systemd-nspawn, reached over real SSH at
# 127.0.20.1), then validate, plan and apply the nine-service platform to it, show that a second
# plan is empty, and print its status. Run as root on Debian 12, from the checkout.
#
# It leaves everything the README's tour needs in place: the host keeps running, recon's state is in
# the default location (./state; an earlier state there is moved to state/before-demo-TIME/), and the
# vault token the platform's vault-service reads is /tmp/recon-demo/vault-token (0600), which
# specs/overrides/local.yaml names. So the tour's commands work as written, with no --state or
# VAULT_TOKEN. Set RECON_DEMO_SKIP_SETUP=1 to skip scripts/setup.sh (already installed).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${RECON_DEMO_SKIP_SETUP:-}" = 1 ] || bash scripts/setup.sh
DEMO=/tmp/recon-demo
HOSTS=(.venv/bin/python -m testhosts --dir "$DEMO" --net 127.0.20 --prefix rdemo)
SPEC=(-f specs/platform.yaml -f specs/overrides/local.yaml)
recon() { echo; echo "\$ recon $*"; .venv/bin/recon "$@"; }

"${HOSTS[@]}" down >/dev/null 2>&1 || true
# a fresh host: recon's state of the previous demo host would only describe a host that is gone
if compgen -G "state/*.json*" >/dev/null || [ -e state/recon.lock ]; then
    old="state/before-demo-$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$old"
    mv state/recon.state.json state/history.jsonl state/recon.lock "$old"/ 2>/dev/null || true
    echo "Moved the earlier state to $old/"
fi
"${HOSTS[@]}" up 1
if [ ! -s "$DEMO/vault-token" ]; then
    (umask 077; printf 'demo-%s\n' "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" > "$DEMO/vault-token")
fi
recon validate "${SPEC[@]}"
recon plan "${SPEC[@]}"
recon apply "${SPEC[@]}" --auto-approve
recon plan "${SPEC[@]}" --detailed-exitcode
recon status "${SPEC[@]}"
echo
echo "The demo host keeps running; the README's tour works against it now. Try: .venv/bin/recon plan ${SPEC[*]}"
echo "Tear it down with: ${HOSTS[*]} down"
