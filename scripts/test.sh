#!/usr/bin/env bash
# Install everything, then run the whole test suite: unit and integration tests (real
# kernels, kill -9 crashes), the notebooks under nbval, and the browser tests
# (JupyterLab in headless Chromium). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,bench,dask,postgres
. .venv/bin/activate
exec python -m pytest tests notebooks \
  --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg \
  -p no:cacheprovider "$@"
