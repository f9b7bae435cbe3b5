#!/usr/bin/env bash
# Run the whole test suite on this machine (sets everything up first): lint, format, types, tests (also on
# Python 3.13 and on the lowest versions pyproject allows), and a smoke run of the benchmarks.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k injector`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV="${DISTRELOAD_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"

# The integration tests need a Redis at 127.0.0.1:6379; start one (keeping nothing on disk) if none answers.
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  echo "test: no Redis at 127.0.0.1:6379, starting one" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/distreload-test-redis.log"
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done
fi

ruff check distreload tests benchmarks
ruff format --check distreload tests benchmarks
mypy

status=0
# pytest's exit 5 (no tests collected) stays a failure: a run that tested nothing proves nothing.
python -m pytest --cov=distreload --cov-report=term "$@" || status=$?
if [[ $status -eq 0 && $# -eq 0 ]]; then
  # What pyproject promises: the fast tests on Python 3.13 and with the lowest versions it allows.
  bash scripts/compat.sh || status=$?
fi
if [[ $status -eq 0 && -f benchmarks/run.py ]]; then
  # Benchmarks run in CI as a short smoke run; their figures come from full runs by hand.
  python benchmarks/run.py --smoke
fi
exit $status
