#!/usr/bin/env bash
# Set up the venv (CPU build of torch), check lint and format, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_EXTRAS="[test,slurm,baselines]" . scripts/setup.sh
ruff check src tests benchmarks
ruff format --check src tests benchmarks
snakefmt --check .
snakemake --lint
# The real-data test (tests/test_idx.py) reads Debian's Fashion-MNIST; install it where we can
# (root with apt), else that one test skips, saying how to get it.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } ||
        echo "test.sh: could not apt-get install dataset-fashion-mnist; its test will skip" >&2
fi
python -m pytest "$@"
