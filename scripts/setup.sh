#!/usr/bin/env bash
# Install what nbflow needs on a fresh Debian machine: the graphviz `dot` binary,
# Chromium (for the browser tests) and the PostgreSQL server (which the PostgresBackend
# tests start themselves) from Debian, and a virtualenv in .venv with nbflow and its
# extras. Safe to run again: it skips what is already there.
#   usage: bash scripts/setup.sh [extras]     (default extras: test,bench,dask)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,bench,dask}"

python=${PYTHON:-python3}
need=()
command -v "$python" >/dev/null 2>&1 || need+=(python3)
# Debian's python3 lacks ensurepip (so `python3 -m venv` fails) until python3-venv is installed.
"$python" -c "import ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
command -v dot >/dev/null 2>&1 || need+=(graphviz)
if [[ ",$extras," == *",test,"* ]]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  # the PostgreSQL server the test suite starts for PostgresBackend (tests/pg_server.py)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
fi
if (( ${#need[@]} )); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "setup: installing Debian packages: ${need[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q -o DPkg::Lock::Timeout=600 "${need[@]}"
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
. .venv/bin/activate
stamp=".venv/.nbflow-installed-$extras"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  echo "setup: pip install -e .[$extras]"
  python -m pip install -q --upgrade pip
  python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
