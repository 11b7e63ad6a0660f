"""The default workflow end to end, then its moments and learning-curve jobs with each Gram kernel, side by side.

1. ``snakemake --cores N`` on ``config.yaml`` into a fresh results folder (``--config results=...``):
   wall time, LDS against one seed and the seed mean, their fractions of the noise ceiling, and
   the kernels the moments job chose (its manifest);
2. on that run's fit store, the ``moments`` and ``learning-curve`` jobs as the rules call them
   (fresh processes, ``fit.threads``), once with ``--kernels auto`` (what the dispatch point
   chooses here) and once forced to ``gram=int8,cross=float32`` (what every CPU ran before
   the dispatch point), interleaved; whether the two give bit-identical moments and the
   same learning-curve table.

Nothing is asserted; the figures are printed (and recorded with ``--record``).

Run:  python benchmarks/default_run.py [--cores 2] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dmflow.config import load_config
from dmflow.core.schema import result_keys

import record
from workflow_run import headline, run_workflow

REPO = Path(__file__).resolve().parents[1]
SECTION = "default_run.py"
HEADER = (
    "cores",
    "1-min load",
    "end to end s",
    "LDS one seed",
    "LDS seed mean",
    "of ceiling (Pearson, mean)",
    "kernels",
    "moments auto s",
    "moments int8 Gram s",
    "int8 Gram / auto",
    "moments identical",
    "curve auto s",
    "curve int8 Gram s",
    "curve identical",
)
NOTES = """`python benchmarks/default_run.py` (see its docstring): `snakemake --cores` **cores** on config.yaml into a fresh
folder; **LDS** (Spearman, mean over targets) against one seed and the 5-seed mean, and the latter's fraction of the
noise ceiling (Pearson, as summary.md); **kernels**: the moments job's Gram / cross products as `dmflow.core.kernels` chose them. Then, on
that store, the `moments` and `learning-curve` jobs (fresh processes) with the chosen kernels (**auto**) and with the
Gram forced to int8 (`gram=int8,cross=float32`: what every CPU ran before the dispatch point), interleaved;
**identical**: bit-identical moments arrays, the same learning-curve table."""
FORCED = "gram=int8,cross=float32"


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    record.add_arguments(parser)
    args = parser.parse_args()
    results_file = record.results_file(parser, args)
    if args.record:
        record.check_section(results_file, SECTION, HEADER)
    machine = record.machine_cells()
    load = f"{os.getloadavg()[0]:.1f}"
    config = load_config(REPO / "config.yaml")
    fit = json.dumps({k: v for k, v in config["fit"].items() if k in result_keys("fit")}, sort_keys=True)
    threads = str(config["fit"]["threads"])
    dm = [sys.executable, "-m", "dmflow"]
    with tempfile.TemporaryDirectory(prefix="dmflow-default-") as tmp:
        results = Path(tmp) / "results"
        wall = run_workflow(REPO / "config.yaml", args.cores, results)
        figures = headline(results, "0.5")
        chosen = json.loads((results / "moments/0.5/manifest.json").read_text()).get("kernels", {})
        kernels = f"{chosen.get('gram', '?')} / {chosen.get('cross', '?')}"
        store = results / "store/0.5"
        seconds = {"moments": {}, "curve": {}}
        for kernel in ("auto", FORCED):
            out = Path(tmp) / kernel.replace(",", "_")
            seconds["moments"][kernel] = timed(
                [*dm, "--kernels", kernel, "moments", "--store", str(store / "fit"), "--val-fraction"]
                + [str(config["fit"]["val_fraction"]), "--seed", str(config["seed"]), "--threads", threads]
                + ["--out-dir", str(out / "moments")]
            )
            seconds["curve"][kernel] = timed(
                [*dm, "--kernels", kernel, "learning-curve", "--fit-store", str(store / "fit"), "--eval-store"]
                + [str(store / "eval"), "--fractions", *map(str, config["evaluate"]["learning_curve"])]
                + ["--datamodels", str(results / "datamodels/0.5.npz"), "--fit", fit, "--seed", str(config["seed"])]
                + ["--threads", threads, "--table", str(out / "curve.csv"), "--figure", str(out / "curve.png")]
            )
        a, b = (Path(tmp) / k.replace(",", "_") for k in ("auto", FORCED))
        same_moments = all(
            np.array_equal(np.load(f), np.load(b / "moments" / f.name)) for f in sorted((a / "moments").glob("*.npy"))
        )
        same_curve = (a / "curve.csv").read_text() == (b / "curve.csv").read_text()
    lds1, ldsm, frac = figures["lds_single"], figures["lds_mean"], figures["ceiling"]
    m_auto, m_int8 = seconds["moments"]["auto"], seconds["moments"][FORCED]
    print(
        f"default run: {wall:.0f} s on {args.cores} cores (load {load}); LDS {lds1:.4f} / {ldsm:.4f}; kernels {kernels}\n"
        f"moments job: auto {m_auto:.1f} s, int8 Gram {m_int8:.1f} s ({m_int8 / m_auto:.1f}x), identical {same_moments}\n"
        f"learning curve: auto {seconds['curve']['auto']:.1f} s, int8 Gram {seconds['curve'][FORCED]:.1f} s, "
        f"identical {same_curve}"
    )
    if args.record:
        cells = [
            str(args.cores),
            load,
            record.fmt(wall, ".0f"),
            record.fmt(lds1, ".4f"),
            record.fmt(ldsm, ".4f"),
            record.fmt(frac, ".3f"),
            kernels,
            record.fmt(m_auto, ".1f"),
            record.fmt(m_int8, ".1f"),
            record.fmt(m_int8 / m_auto, ".1f"),
            str(same_moments),
            record.fmt(seconds["curve"]["auto"], ".1f"),
            record.fmt(seconds["curve"][FORCED], ".1f"),
            str(same_curve),
        ]
        record.append_row(results_file, SECTION, HEADER, [*machine, *cells], notes=NOTES)
        print(f"recorded a row in {results_file} under '## {SECTION}'")


if __name__ == "__main__":
    main()
