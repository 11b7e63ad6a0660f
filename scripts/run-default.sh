#!/usr/bin/env bash
# Set up a venv (CPU build of torch) and run the default workflow on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e .
snakemake --cores "${CORES:-2}" "$@"
