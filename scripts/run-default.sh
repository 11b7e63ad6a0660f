#!/usr/bin/env bash
# Set up the venv (CPU build of torch) and run the default workflow on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_EXTRAS="${SETUP_EXTRAS:-[baselines]}" . scripts/setup.sh
snakemake --cores "${CORES:-2}" "$@"
