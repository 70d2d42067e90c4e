# Sourced by the Python test runners (tests/chart/run.sh, tests/browser/run.sh).
# ensure_venv DIR REQUIREMENTS: a venv at DIR with the pinned REQUIREMENTS from PyPI, rebuilt
# only when the pins change. Needs python3 (or $PYTHON) with the venv module.
ensure_venv() {
  local venv="$1" requirements="$2" python="${PYTHON:-python3}"
  local want stamp
  want="$(sha256sum "$requirements" | cut -d' ' -f1)"
  stamp="$venv/.requirements.sha256"
  if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "creating venv at $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      -r "$requirements"
    echo "$want" >"$stamp"
  fi
}
