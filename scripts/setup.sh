#!/usr/bin/env bash
# Create .venv (Python >= 3.11) with the CPU build of torch and dmflow; sourced by
# run-default.sh and test.sh. Extra pip targets: SETUP_EXTRAS (e.g. "[test,slurm]").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".${SETUP_EXTRAS:-}"
