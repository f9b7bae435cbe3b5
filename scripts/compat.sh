#!/usr/bin/env bash
# What pyproject promises, tested: the fast tests (no browser, no end-to-end servers) on Python 3.13 and on
# the lowest versions of distreload's own dependencies that pyproject allows. Each runs in a virtualenv of
# its own (.venv-py313, .venv-lowest), kept between runs; the lowest versions are read from pyproject, so
# this follows the bounds as they move. Used by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

FAST_TESTS=(tests --ignore=tests/system --ignore=tests/test_client.py -m "not browser" -q -p no:cacheprovider)

find_python() {  # find_python 3.13: that interpreter from PATH or pyenv, or nothing
  local version=$1 candidate
  # A pyenv shim answers to the name even when its version is not selected: ask each one to run.
  for candidate in "python$version" "$HOME"/.pyenv/versions/"$version"*/bin/"python$version"; do
    if "$candidate" -c "" >/dev/null 2>&1; then command -v "$candidate"; return; fi
  done
}

lowest_pins() {  # name==lower-bound for every ">=" dependency in [project].dependencies
  python3 - <<'PY'
import re, tomllib
with open("pyproject.toml", "rb") as f:
    for requirement in tomllib.load(f)["project"]["dependencies"]:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][^,;\s]*).*", requirement)
        if match:
            print(f"{match.group(1)}=={match.group(2)}")
PY
}

prepare() {  # prepare VENV PYTHON [PINS...]: a virtualenv with what the fast tests need, and the pins
  local venv=$1 python=$2
  shift 2
  local stamp="$venv/.distreload-installed-$(echo "$*" | tr ' /=' '_-_')"
  if [[ ! -x "$venv/bin/python" ]]; then "$python" -m venv "$venv"; fi
  if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$venv/bin/python" -m pip install -q -e ".[unit]" "$@"
    touch "$stamp"
  fi
}

status=0
py313=$(find_python 3.13)
if [[ -z "$py313" ]]; then
  echo "compat: no Python 3.13 on this machine (PATH or pyenv)" >&2
  [[ "${CI:-}" == "true" ]] && status=1
else
  prepare .venv-py313 "$py313"
  echo "compat: fast tests on $("$py313" --version)" >&2
  .venv-py313/bin/python -m pytest "${FAST_TESTS[@]}" || status=1
fi

mapfile -t pins < <(lowest_pins)
prepare .venv-lowest "${PYTHON:-python3}" "${pins[@]}"
echo "compat: fast tests with the lowest versions pyproject allows: ${pins[*]}" >&2
.venv-lowest/bin/python -m pytest "${FAST_TESTS[@]}" || status=1
exit $status
