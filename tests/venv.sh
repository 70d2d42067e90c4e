# Sourced by the Python test runners (tests/chart/venv.sh, tests/browser/run.sh).
# ensure_venv DIR REQUIREMENTS: a venv at DIR with the pinned REQUIREMENTS from PyPI, rebuilt
# only when the pins change; a lock beside DIR keeps concurrent callers (cargo test runs several
# at once) from building it twice. Needs python3 (or $PYTHON) with the venv module. Progress
# goes to stderr so callers can print the venv's python on stdout.
ensure_venv() {
  local venv="$1" requirements="$2" python="${PYTHON:-python3}"
  local want stamp
  mkdir -p "$(dirname "$venv")"
  (
    flock 9
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    stamp="$venv/.requirements.sha256"
    if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
      echo "creating venv at $venv" >&2
      rm -rf "$venv"
      "$python" -m venv "$venv"
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$requirements" >&2
      echo "$want" >"$stamp"
    fi
  ) 9>"$venv.lock"
}
