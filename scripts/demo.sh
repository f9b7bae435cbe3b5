#!/usr/bin/env bash
# Try distreload from a checkout: set up a virtualenv with the demo extras, then run `distreload demo`
# (two app servers of two workers each on localhost; no Redis needed). Extra arguments go to the demo,
# e.g. `bash scripts/demo.sh --port 9000 --hosts 3`. Needs only Python 3.11+ and pip: no system package,
# so it runs the same on Debian, macOS or Git Bash on Windows.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DISTRELOAD_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

venv_python() {
  # A Windows virtualenv keeps its interpreter in Scripts\, every other one in bin/.
  if [[ -x "$VENV/bin/python" ]]; then echo "$VENV/bin/python"; else echo "$VENV/Scripts/python.exe"; fi
}

# Set up unless this virtualenv already has everything the demo imports (it may hold more extras).
if ! "$(venv_python)" -c "import distreload.demo, uvicorn, fakeredis, lupa" >/dev/null 2>&1; then
  [[ -x "$(venv_python)" ]] || "$PYTHON" -m venv "$VENV"
  "$(venv_python)" -m pip install -q -e ".[${DISTRELOAD_EXTRAS:-demo}]"
fi
exec "$(venv_python)" -m distreload demo "$@"
