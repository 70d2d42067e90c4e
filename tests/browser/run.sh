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
python="${PYTHON:-python3}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"

if [[ ! -x "$CHROMIUM" || ! -x "$CHROMEDRIVER" ]]; then
  echo "browser tests: Chromium and its driver are missing ($CHROMIUM, $CHROMEDRIVER)." >&2
  echo "Install Debian's packages:  sudo apt-get install -y chromium chromium-driver" >&2
  echo "(or point CHROMIUM and CHROMEDRIVER at a matching pair)." >&2
  exit 1
fi

# Rebuild the venv when the pins change, not on every run.
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "browser tests: creating venv at $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$requirements"
  echo "$want" >"$stamp"
fi

cd "$root"
cargo build --locked --quiet --bin argocd-gateway --example browser-sim
export ARGOCD_GATEWAY_BIN="$root/target/debug/argocd-gateway"
export BROWSER_SIM_BIN="$root/target/debug/examples/browser-sim"
export SCREENSHOTS="$root/target/browser-screenshots"
mkdir -p "$SCREENSHOTS"
# Selenium must never try to download a driver: the one above is the one to use.
export SE_OFFLINE=true
exec "$venv/bin/python" -m pytest -c tests/browser/pytest.ini tests/browser "$@"
