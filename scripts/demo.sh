#!/usr/bin/env bash
# Try distreload on a fresh machine: set up a virtualenv with the demo extras, then run `distreload demo`
# (two app servers of two workers each on localhost; no Redis needed). Extra arguments go to the demo,
# e.g. `bash scripts/demo.sh --port 9000 --hosts 3`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DISTRELOAD_VENV:-.venv}"

# Bootstrap unless this virtualenv already has everything the demo imports (it may hold more extras).
if ! "$VENV/bin/python" -c "import distreload.demo, uvicorn, fakeredis, lupa" >/dev/null 2>&1; then
  DISTRELOAD_EXTRAS="${DISTRELOAD_EXTRAS:-demo}" bash scripts/bootstrap.sh
fi
exec "$VENV/bin/python" -m distreload demo "$@"
