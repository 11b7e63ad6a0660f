#!/usr/bin/env bash
# Set up the venv (CPU build of torch) and run the whole test suite with pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_EXTRAS="[test,slurm]" . scripts/setup.sh
python -m pytest "$@"
