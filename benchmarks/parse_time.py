"""How long `snakemake -n` of the default config takes: a base commit (default `main`) against this tree.

A dry run parses the Snakefile and every rules file (``rules/common.smk`` validates the config and sizes
the jobs) and builds the DAG; it runs before every real run, and every `snakemake -n` a user types. Both
trees are copied to a temporary folder (the base from `git archive`, this one from the working tree,
uncommitted changes included) and run with the same Python, each with its own ``src/`` first on
PYTHONPATH, alternately for ``--rounds`` rounds, so that the machine's load falls on both alike. Printed:
each round's seconds, the medians and their ratio (base / this tree: above 1, this tree parses faster),
and whether each imported torch. Nothing is asserted.

Run:  python benchmarks/parse_time.py [--base main] [--rounds 5] [--record]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import record

REPO = Path(__file__).resolve().parent.parent
TREE = ("Snakefile", "config.yaml", "rules", "src", "profiles", "report", "envs")
"""What a dry run reads."""
SECTION = "parse_time.py"
HEADER = ("base", "rounds", "1-min load", "base s", "this tree s", "ratio", "torch imported (base / this)")
NOTES = """`python benchmarks/parse_time.py` (see its docstring): `snakemake -n` of the default config.yaml,
**base** commit against this tree, run alternately **rounds** times each; **base s**, **this tree s**: the
median seconds of a dry run; **ratio**: base / this tree; **torch imported**: whether parsing imported torch.
"""


def export_base(commit: str, dest: Path) -> None:
    """The files of ``TREE`` at ``commit`` (``git archive``; the repository is not touched)."""
    archive = subprocess.run(["git", "archive", commit, *TREE], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")


def export_tree(dest: Path) -> None:
    """The files of ``TREE`` as they are in this working tree."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake")
    for name in TREE:
        src = REPO / name
        (shutil.copytree(src, dest / name, ignore=ignore) if src.is_dir() else shutil.copy(src, dest / name))


def dry_run(tree: Path, *, importtime: bool = False) -> tuple[float, bool | None]:
    """Seconds of one `snakemake -n` in ``tree`` with its own src/; with ``importtime`` (``python -X
    importtime``, which slows the imports down: not timed), whether it imported torch, else None."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    flags = ["-X", "importtime"] if importtime else []
    cmd = [sys.executable, *flags, "-m", "snakemake", "-n", "--cores", "1", "--config", "results=results"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed in {tree}:\n{proc.stderr[-3000:]}")
    if not importtime:
        return seconds, None
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return seconds, "torch" in modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--rounds", type=int, default=5, help="dry runs of each tree, alternating (default 5)")
    record.add_arguments(parser)
    args = parser.parse_args()
    results_file = record.results_file(parser, args)
    if args.record:
        record.check_section(results_file, SECTION, HEADER)
    machine = record.machine_cells()
    load = f"{os.getloadavg()[0]:.1f}"
    base_commit = subprocess.run(
        ["git", "rev-parse", "--short", args.base], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="dmflow-parse-") as tmp:
        trees = {"base": Path(tmp) / "base", "this": Path(tmp) / "this"}
        for tree in trees.values():
            tree.mkdir()
        export_base(args.base, trees["base"])
        export_tree(trees["this"])
        # a first run of each writes .snakemake/, warms the file cache and lists the modules imported
        torch = {key: bool(dry_run(tree, importtime=True)[1]) for key, tree in trees.items()}
        times: dict[str, list[float]] = {key: [] for key in trees}
        for i in range(args.rounds):
            for key in trees if i % 2 == 0 else reversed(trees):
                times[key].append(dry_run(trees[key])[0])
            print(f"round {i + 1}: base {times['base'][-1]:.2f} s, this tree {times['this'][-1]:.2f} s", flush=True)
    base, this = statistics.median(times["base"]), statistics.median(times["this"])
    ratio = base / this
    load = f"{load} / {os.getloadavg()[0]:.1f}"
    print(
        f"snakemake -n of config.yaml, median of {args.rounds}: base {args.base} ({base_commit}) {base:.2f} s, "
        f"this tree {this:.2f} s: {ratio:.2f}x; torch imported: base {torch['base']}, this tree {torch['this']} "
        f"(1-min load {load})"
    )
    if args.record:
        cells = [
            f"{args.base} ({base_commit})",
            str(args.rounds),
            load,
            record.fmt(base, ".2f"),
            record.fmt(this, ".2f"),
            f"{ratio:.2f}x",
            f"{'yes' if torch['base'] else 'no'} / {'yes' if torch['this'] else 'no'}",
        ]
        record.append_row(results_file, SECTION, HEADER, [*machine, *cells], notes=NOTES)
        print(f"recorded a row in {results_file} under '## {SECTION}'")


if __name__ == "__main__":
    main()
