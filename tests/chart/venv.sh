#!/usr/bin/env bash
# Creates (or reuses) the chart tests' virtualenv at target/chart-venv and prints its python.
# Used by run.sh and by the Rust tests that render the chart; a lock keeps concurrent callers
# from building it twice. Needs only python3 and PyPI.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/target/chart-venv"
requirements="$root/tests/chart/requirements.txt"
python="${PYTHON:-python3}"

mkdir -p "$root/target"
exec 9>"$root/target/chart-venv.lock"
flock 9

# Rebuild the venv when the pins change, not on every run.
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "chart tests: creating venv at $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$requirements" >&2
  echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
