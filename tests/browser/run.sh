#!/usr/bin/env bash
# Browser tests: a real Chromium (Debian's chromium + chromium-driver) drives the hub's status
# page against a real hub, gateway and Argo CD simulator, started as processes. Creates (or
# reuses) a venv at target/browser-venv with selenium from PyPI; writes screenshots and the
# processes' logs to target/browser-screenshots/. Extra arguments go to pytest (e.g. -k csrf).
# BROWSER_APPS sets the number of simulated applications (default 10000).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/target/browser-venv"
requirements="$root/tests/browser/requirements.txt"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"

if [[ ! -x "$CHROMIUM" || ! -x "$CHROMEDRIVER" ]]; then
  echo "browser tests: Chromium and its driver are missing ($CHROMIUM, $CHROMEDRIVER)." >&2
  echo "Install Debian's packages:  sudo apt-get install -y chromium chromium-driver" >&2
  echo "(or point CHROMIUM and CHROMEDRIVER at a matching pair)." >&2
  exit 1
fi

# shellcheck source=../venv.sh
source "$root/tests/venv.sh"
ensure_venv "$venv" "$requirements"

cd "$root"
cargo build --locked --quiet --bin argocd-gateway --example browser-sim
export ARGOCD_GATEWAY_BIN="$root/target/debug/argocd-gateway"
export BROWSER_SIM_BIN="$root/target/debug/examples/browser-sim"
export SCREENSHOTS="$root/target/browser-screenshots"
mkdir -p "$SCREENSHOTS"
# Selenium must never try to download a driver: the one above is the one to use.
export SE_OFFLINE=true
exec "$venv/bin/python" -m pytest -c tests/browser/pytest.ini tests/browser "$@"
