#!/usr/bin/env bash
# Install everything, then open the quickstart notebook in JupyterLab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,bench,dask
. .venv/bin/activate
root=()
[[ $(id -u) -eq 0 ]] && root=(--allow-root)
exec jupyter lab "${root[@]}" notebooks/01-quickstart.ipynb "$@"
