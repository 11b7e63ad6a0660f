#!/usr/bin/env bash
# Set up the venv (CPU build of torch), check lint and format, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_EXTRAS="[test,slurm,baselines]" . scripts/setup.sh
ruff check src tests benchmarks
ruff format --check src tests benchmarks
snakefmt --check .
snakemake --lint
python -m pytest "$@"
