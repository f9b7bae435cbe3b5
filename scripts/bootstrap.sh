#!/usr/bin/env bash
# Set up a fresh Debian machine for distreload: system packages, a virtualenv with the project installed.
# Idempotent: fast when everything is already there. Used by scripts/test.sh and scripts/demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${DISTRELOAD_VENV:-.venv}"
EXTRAS="${DISTRELOAD_EXTRAS:-test,dev}"

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [[ ",$EXTRAS," == *",test,"* ]]; then
  command -v redis-sentinel >/dev/null 2>&1 || need_apt+=(redis-sentinel)  # the Sentinel failover tests
  command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)  # redis-cli --cluster create
  command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)  # packet loss between test hosts
  command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)  # network namespaces as test hosts
  [[ -x /usr/bin/chromium ]] || need_apt+=(chromium)
  command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)  # the rediss:// tests make a certificate
  command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)  # the benchmarks' HTTP load generator
  command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)  # the benchmarks count instructions per request
fi
if ((${#need_apt[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: please install ${need_apt[*]} (Debian/Ubuntu: sudo apt-get install ${need_apt[*]})" >&2
  fi
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.distreload-installed-$EXTRAS"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  touch "$stamp"
fi
